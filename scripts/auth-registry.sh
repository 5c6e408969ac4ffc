#!/usr/bin/env bash
# A CNCF registry that asks for credentials, over TLS with a CA made for it, for the registry
# tests: auth-registry.sh DIR HOST PORT USER PASSWORD
# Writes DIR/ca.crt (the CA to trust), then runs the registry in the foreground (stop it with
# SIGTERM). Its storage is DIR/data.
set -euo pipefail
dir="$1" host="$2" port="$3" user="$4" password="$5"
mkdir -p "$dir/data"
cd "$dir"
openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=builder test CA" \
  -keyout ca.key -out ca.crt 2>/dev/null
openssl req -newkey rsa:2048 -nodes -subj "/CN=$host" -keyout server.key -out server.csr 2>/dev/null
printf 'subjectAltName=IP:%s,IP:127.0.0.1,DNS:localhost\n' "$host" >san.ext
openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 2 \
  -extfile san.ext -out server.crt 2>/dev/null
htpasswd -Bbn "$user" "$password" >htpasswd
cat >registry.yml <<YAML
version: 0.1
log:
  level: warn
storage:
  filesystem:
    rootdirectory: $dir/data
http:
  addr: $host:$port
  tls:
    certificate: $dir/server.crt
    key: $dir/server.key
auth:
  htpasswd:
    realm: builder-tests
    path: $dir/htpasswd
YAML
exec docker-registry serve registry.yml
