#!/bin/sh
for f in /data/*.zip; do echo "$f"; done
