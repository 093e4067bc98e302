#!/bin/sh
exec python -c 'import six; print(six.__version__)'
