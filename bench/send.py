"""Signed GitHub push deliveries at a steady rate, for bench/chaos.sh and bench/load.sh (not run
on its own).

usage: send.py URL PAYLOAD SECRET RATE COUNT OUT [forged]

PAYLOAD is a push payload whose body every delivery repeats with a nonce of its own as its first
field ({"bench_nonce": N, ...}): builder takes a signed body once whatever its delivery id. COUNT
deliveries are sent, delivery k at k / RATE seconds from the start, each from a thread of its own so that a server that
is down or slow to answer does not slow the rate. No delivery is retried: GitHub does not redeliver
on its own. OUT gets one line a delivery, "DELIVERY_ID ANSWER", ANSWER being the HTTP status or
the error the sender saw (ERR:ConnectionRefusedError, ERR:timeout, ...). With "forged", every
signature is wrong (made with another secret): deliveries from a stranger.
"""

import hashlib
import hmac
import http.client
import sys
import threading
import time
import urllib.parse
import uuid


def main():
    url, payload_path, secret, rate, count, out_path = sys.argv[1:7]
    if sys.argv[7:] == ["forged"]:
        secret = "not " + secret
    target = urllib.parse.urlsplit(url)
    rest = open(payload_path, "rb").read().lstrip()[1:]
    secret, rate, count = secret.encode(), float(rate), int(count)
    answers, lock = [], threading.Lock()

    def deliver(k):
        body = b'{"bench_nonce":%d,' % k + rest
        delivery = str(uuid.uuid4())
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "GitHub-Hookshot/bench",
            "X-GitHub-Event": "push",
            "X-GitHub-Delivery": delivery,
            "X-Hub-Signature-256": "sha256="
            + hmac.new(secret, body, hashlib.sha256).hexdigest(),
        }
        try:
            connection = http.client.HTTPConnection(target.hostname, target.port, timeout=10)
            connection.request("POST", target.path, body, headers)
            answer = str(connection.getresponse().status)
            connection.close()
        except TimeoutError:
            answer = "ERR:timeout"
        except OSError as error:
            answer = "ERR:" + type(error).__name__
        except http.client.HTTPException as error:
            answer = "ERR:" + type(error).__name__
        with lock:
            answers.append((delivery, answer))

    start, threads, k = time.monotonic(), [], 0
    while k < count:
        delay = start + k / rate - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        thread = threading.Thread(target=deliver, args=(k,))
        thread.start()
        threads.append(thread)
        k += 1
    for thread in threads:
        thread.join()
    with open(out_path, "w") as out:
        for delivery, answer in answers:
            out.write(f"{delivery} {answer}\n")


main()
