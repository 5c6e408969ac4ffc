#!/bin/sh
# A local stand-in for a Cloud Run deploy: start the new revision beside the serving one, and
# swap it in under the service's name only once it is healthy, so a broken image never
# replaces a healthy one.
#   deploy.sh SERVICE IMAGE REVISION
set -eu
service=$1 image=$2 revision=$1-$3
limit=60 # seconds the new revision has to become healthy

docker run -d --name "$revision" -p 127.0.0.1::8080 \
  --label builder.service="$service" --label builder.revision="$3" "$image" >/dev/null
echo "started $revision from $image"

state() {
  docker inspect "$revision" \
    --format '{{.State.Status}}/{{if .State.Health}}{{.State.Health.Status}}{{end}}'
}
waited=0
now=$(state)
while [ "$now" = running/starting ] && [ "$waited" -lt "$limit" ]; do
  sleep 1
  waited=$((waited + 1))
  now=$(state)
done
if [ "$now" != running/healthy ]; then
  echo "$revision is $now after ${waited}s; $service keeps its current revision." >&2
  echo "Logs of $revision:" >&2
  docker logs "$revision" >&2
  docker rm -f "$revision" >/dev/null
  exit 1
fi

if docker container inspect "$service" >/dev/null 2>&1; then
  docker rm -f "$service" >/dev/null
fi
docker rename "$revision" "$service"
echo "$service serves revision $3 at http://$(docker port "$service" 8080)"
