# Certificates, keys and kubeconfigs of the test cluster (openssl). Sourced by `up`.
# Every file is made once; a running cluster keeps its PKI.
# shellcheck shell=bash

# issue NAME SUBJECT [SANS]: an EC P-256 key and a 10-year certificate signed by the cluster CA.
issue() {
  local name="$1" subject="$2" sans="${3:-}" ext
  [[ -s "$PKI/$name.crt" ]] && return 0
  ext="$(mktemp)"
  {
    echo "basicConstraints=critical,CA:FALSE"
    echo "keyUsage=critical,digitalSignature,keyEncipherment"
    echo "extendedKeyUsage=serverAuth,clientAuth"
    [[ -n "$sans" ]] && echo "subjectAltName=$sans"
  } >"$ext"
  openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
    -keyout "$PKI/$name.key" -subj "$subject" -out "$PKI/$name.csr" 2>/dev/null
  openssl x509 -req -in "$PKI/$name.csr" -CA "$PKI/ca.crt" -CAkey "$PKI/ca.key" -CAcreateserial \
    -days 3650 -sha256 -extfile "$ext" -out "$PKI/$name.crt" 2>/dev/null
  rm -f "$ext" "$PKI/$name.csr"
  chmod 600 "$PKI/$name.key"
}

# kubeconfig FILE USER: a kubeconfig for the API server with the client certificate USER.crt.
kubeconfig() {
  local file="$1" user="$2"
  [[ -s "$file" ]] && return 0
  cat >"$file.tmp" <<KUBECONFIG
apiVersion: v1
kind: Config
clusters:
- name: kade
  cluster:
    server: $APISERVER
    certificate-authority-data: $(base64 -w0 "$PKI/ca.crt")
users:
- name: $user
  user:
    client-certificate-data: $(base64 -w0 "$PKI/$user.crt")
    client-key-data: $(base64 -w0 "$PKI/$user.key")
contexts:
- name: kade
  context: {cluster: kade, user: $user}
current-context: kade
KUBECONFIG
  chmod 600 "$file.tmp"
  mv "$file.tmp" "$file"
}

make_pki() {
  mkdir -p "$PKI"
  chmod 700 "$PKI"
  if [[ ! -s "$PKI/ca.crt" ]]; then
    openssl req -x509 -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
      -keyout "$PKI/ca.key" -subj "/CN=kade-test-cluster-ca" -days 3650 -sha256 \
      -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
      -out "$PKI/ca.crt" 2>/dev/null
    chmod 600 "$PKI/ca.key"
  fi
  if [[ ! -s "$PKI/service-account.key" ]]; then
    openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$PKI/service-account.key" 2>/dev/null
    openssl pkey -in "$PKI/service-account.key" -pubout -out "$PKI/service-account.pub"
    chmod 600 "$PKI/service-account.key"
  fi
  issue apiserver "/CN=kube-apiserver" \
    "IP:$NODE_IP,IP:$KUBERNETES_SERVICE_IP,IP:127.0.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local"
  issue apiserver-kubelet-client "/O=system:masters/CN=kube-apiserver-kubelet-client"
  issue admin "/O=system:masters/CN=kade-admin"
  issue controller-manager "/CN=system:kube-controller-manager"
  issue scheduler "/CN=system:kube-scheduler"
  issue kube-proxy "/CN=system:kube-proxy"
  issue kubelet "/O=system:nodes/CN=system:node:$NODE_NAME"
  issue kubelet-serving "/CN=$NODE_NAME" "IP:$NODE_IP,DNS:$NODE_NAME"
  kubeconfig "$KUBECONFIG_ADMIN" admin
  local c
  for c in controller-manager scheduler kube-proxy kubelet; do kubeconfig "$STATE/$c.kubeconfig" "$c"; done
}
