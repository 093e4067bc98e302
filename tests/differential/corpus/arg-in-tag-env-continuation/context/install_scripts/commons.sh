#!/bin/bash
mkdir -p /opt/commons && echo commons > /opt/commons/marker
