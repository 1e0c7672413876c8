"""A Kafka client written by others (confluent-kafka for Python) against a
running switchyard: send seed 000's create-user request and wait for the
reply on create-user-response, as the Persian service's callers do.

Usage: python confluent_roundtrip.py BROKER REQUEST_ID
Prints the reply's value (JSON) on success; exits 1 with a reason if no
reply comes within 60 s.
"""
import json
import sys
import time

from confluent_kafka import Consumer, Producer

broker, request_id = sys.argv[1], sys.argv[2]

consumer = Consumer({
    "bootstrap.servers": broker,
    "group.id": f"confluent-roundtrip-{request_id}",
    "auto.offset.reset": "earliest",
    "enable.auto.commit": False,
})
consumer.subscribe(["create-user-response"])

request = {
    "requestId": request_id,
    "firstName": "احمد",
    "lastName": "محمدی",
    "email": f"{request_id}@example.com",
    "nationalCode": 1234567890,
    "birthDate": "1990-01-01",
}
producer = Producer({"bootstrap.servers": broker})
producer.produce("create-user", key=request_id, value=json.dumps(request).encode())
if producer.flush(30) != 0:
    print("the request was not delivered", file=sys.stderr)
    sys.exit(1)

deadline = time.time() + 60
while time.time() < deadline:
    msg = consumer.poll(0.5)
    if msg is None or msg.error():
        continue
    if msg.key() and msg.key().decode() == request_id:
        print(msg.value().decode())
        consumer.close()
        sys.exit(0)
consumer.close()
print(f"no reply for {request_id} on create-user-response within 60 s", file=sys.stderr)
sys.exit(1)
