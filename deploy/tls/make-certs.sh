#!/bin/sh
# Makes the TLS material of the compose stack (docker-compose.yml, service `certs`) on
# its first start, into the `tls` volume: a CA, and a certificate signed by it for each
# server (postgres, kafka, spendguard; also valid for `localhost`). DEMO ONLY: in
# production the certificates come from your PKI and the CA key is not on the host.
set -eu
umask 077
cd /tls
if [ ! -f ca.crt ]; then
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 825 \
    -subj "/CN=spendguard compose demo CA" -keyout ca.key -out ca.crt
  for name in postgres kafka spendguard; do
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=$name" \
      -keyout "$name.key" -out "$name.csr"
    printf 'subjectAltName=DNS:%s,DNS:localhost\nextendedKeyUsage=serverAuth\nbasicConstraints=CA:FALSE\n' \
      "$name" >"$name.ext"
    openssl x509 -req -in "$name.csr" -CA ca.crt -CAkey ca.key -CAcreateserial -days 825 \
      -extfile "$name.ext" -out "$name.crt"
    rm -f "$name.csr" "$name.ext"
  done
  # Kafka reads a PEM key store: the (PKCS#8, unencrypted) key and its certificate.
  cat kafka.key kafka.crt >kafka-keystore.pem
  rm -f ca.key ca.srl
  # Each server reads its own key only: postgres (uid 999 in postgres:16), Kafka
  # (appuser, uid 1000 in apache/kafka), spendguard (uid 10001, see Dockerfile).
  chown 999:999 postgres.key postgres.crt
  chown 1000:1000 kafka-keystore.pem kafka.key kafka.crt
  chown 10001:10001 spendguard.key spendguard.crt
  chmod 600 postgres.key kafka.key kafka-keystore.pem spendguard.key
  chmod 644 ca.crt postgres.crt kafka.crt spendguard.crt
fi
touch /tls/ready
exec sleep infinity
