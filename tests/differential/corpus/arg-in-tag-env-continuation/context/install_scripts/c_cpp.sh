#!/bin/bash
echo 'int main(){return 0;}' > /opt/hello.c
