import idna
print(idna.encode('example.com'))
