import idna, six
print(idna.encode("example.com"), six.PY3)
