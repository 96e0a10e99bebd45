#!/bin/sh
echo "hello.sh says hi from $(pwd)"
