#!/usr/bin/env bash
# One sale by hand with curl: the README's walk-through, as a script a test runs.
#
# Start the demo and leave it running (its service on :8000, its simulator on :8081):
#     .venv/bin/vipps-pos demo --keep-running
# then, in another terminal:
#     bash docs/walkthrough.sh
# Against your own `serve` + simulator, set S, SIM and ADMIN_KEY first.
set -euo pipefail

S=${S:-http://127.0.0.1:8000}     # the service
SIM=${SIM:-http://127.0.0.1:8081} # the Vipps MobilePay simulator
ADMIN="Authorization: Bearer ${ADMIN_KEY:-dev-placeholder-admin-key}" # development admin key
TILL=${TILL:-kasse-$(date +%s)}   # a new till each run
JSON='Content-Type: application/json'
field() { python3 -c "import json, sys; print(json.load(sys.stdin)$1)"; }

# Operator: a store without a customer club, the webhook for the sales unit, then a till.
curl -sf -X PUT "$S/api/v1/stores/walkthrough" -H "$ADMIN" -H "$JSON" \
     -d '{"name": "Walk-through", "clubPolicy": "off"}' > /dev/null
curl -sf -X POST "$S/api/v1/webhooks/123456/ensure" -H "$ADMIN" > /dev/null
till=$(curl -sf -X POST "$S/api/v1/tills" -H "$ADMIN" -H "$JSON" \
       -d "{\"tillId\": \"$TILL\", \"storeId\": \"walkthrough\", \"locationDescription\": \"Kasse 2\"}")
KEY="Authorization: Bearer $(echo "$till" | field '["apiKey"]')" # shown once: keep it
QR=$(echo "$till" | field '["merchantQrId"]')
echo "till $TILL: QR $(echo "$till" | field '["qrStatus"]'), merchantQrId $QR"

# Till: ring up 129.00 NOK. The Idempotency-Key makes a retry safe.
checkout=$(curl -sf -X POST "$S/api/v1/tills/$TILL/checkouts" -H "$KEY" -H "$JSON" \
           -H "Idempotency-Key: $TILL-sale-1" -d '{"amount": 12900, "currency": "NOK"}')
ID=$(echo "$checkout" | field '["id"]')
REF=$(echo "$checkout" | field '["reference"]') # the payment's reference at Vipps
VERSION=$(echo "$checkout" | field '["version"]')
echo "checkout $ID: $(echo "$checkout" | field '["state"]'), reference $REF"

# Customer (simulated): scans the till's QR sticker.
curl -sf -X POST "$SIM/_sim/qr/$QR/scan" > /dev/null

# Till: long-poll until the payment request is on the phone, then (customer) approve it, then
# long-poll until the sale is final. Each GET returns as soon as the version changes.
wait_until() { # $1: a Python condition on the checkout c
  while :; do
    checkout=$(curl -sf "$S/api/v1/checkouts/$ID?wait=10&version=$VERSION" -H "$KEY")
    VERSION=$(echo "$checkout" | field '["version"]')
    echo "  $(echo "$checkout" | field '["state"]') (version $VERSION)"
    echo "$checkout" | python3 -c "import json, sys; c = json.load(sys.stdin); sys.exit(0 if $1 else 1)" && return
  done
}
wait_until 'c["paymentSent"]'
curl -sf -X POST "$SIM/_sim/payments/$REF/approve" > /dev/null
wait_until 'c["final"]'
echo "captured $(echo "$checkout" | field '["capturedAmount"]') øre"

# Later: refund 49.00 NOK of it.
refund=$(curl -sf -X POST "$S/api/v1/checkouts/$ID/refund" -H "$KEY" -H "$JSON" \
         -H "Idempotency-Key: $TILL-sale-1-refund-1" -d '{"amount": 4900}')
echo "refund: $(echo "$refund" | field '["state"]'), refunded $(echo "$refund" | field '["refundedAmount"]') øre"
