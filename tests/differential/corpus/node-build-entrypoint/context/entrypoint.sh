#!/bin/sh
exec node /home/node/app/dist/app.js "$@"
