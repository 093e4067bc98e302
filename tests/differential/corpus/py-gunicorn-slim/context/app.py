import six
print('thermo', six.PY3)
