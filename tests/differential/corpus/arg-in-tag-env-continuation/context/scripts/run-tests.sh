#!/bin/bash
echo tests
