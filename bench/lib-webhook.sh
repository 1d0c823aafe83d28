# shellcheck shell=bash
# Shared by the benchmarks that drive an injector through a real kube-apiserver
# (bench/rollout.sh, bench/flood.sh). Source it after KUBECONFIG and DIR are set.

# register_webhook NAME URL CA_FILE [REINVOCATION]: the injector's webhook for Pod CREATE in
# namespaces labelled pullsecret-injector/inject=enabled, failurePolicy Ignore, 5 s timeout.
register_webhook() {
  kubectl apply -f - >/dev/null <<EOF_HOOK
apiVersion: admissionregistration.k8s.io/v1
kind: MutatingWebhookConfiguration
metadata: {name: $1}
webhooks:
  - name: inject.pullsecret-injector.io
    admissionReviewVersions: ["v1"]
    sideEffects: None
    failurePolicy: Ignore
    timeoutSeconds: 5
    reinvocationPolicy: ${4:-Never}
    clientConfig:
      url: $2
      caBundle: $(base64 -w0 "$3")
    rules: [{apiGroups: [""], apiVersions: ["v1"], operations: ["CREATE"], resources: ["pods"]}]
    namespaceSelector: {matchLabels: {pullsecret-injector/inject: enabled}}
EOF_HOOK
}

# injected_namespace NS: the namespace, opted in, with a dockerhub Secret; returns once the
# webhook injects there (a server-side dry run), so the load never starts before it.
injected_namespace() {
  kubectl create namespace "$1" >/dev/null
  kubectl label namespace "$1" pullsecret-injector/inject=enabled >/dev/null
  kubectl create secret docker-registry dockerhub -n "$1" --docker-server=https://index.docker.io/v1/ \
    --docker-username=u --docker-password=p >/dev/null
  for _ in $(seq 1 50); do
    kubectl create -n "$1" --dry-run=server -o jsonpath='{.spec.imagePullSecrets[*].name}' -f - <<<'{"apiVersion":"v1","kind":"Pod","metadata":{"name":"probe"},"spec":{"containers":[{"name":"c","image":"nginx"}]}}' 2>/dev/null | grep -q dockerhub && return 0
    sleep 0.2
  done
}

# failed_calls: `failed calling webhook` lines for the injector in the API server's log so far.
failed_calls() { grep -c 'failed calling webhook "inject.pullsecret-injector.io"' "$DIR/apiserver.log" || true; }
