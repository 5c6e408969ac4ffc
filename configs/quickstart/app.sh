#!/bin/sh
echo "hello from the quickstart"
