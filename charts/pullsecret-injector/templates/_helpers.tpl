{{/* Chart name, truncated to the DNS label limit. */}}
{{- define "pullsecret-injector.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Full name: the release name, plus the chart name when the release name does not contain it. */}}
{{- define "pullsecret-injector.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "pullsecret-injector.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "pullsecret-injector.selectorLabels" -}}
app.kubernetes.io/name: {{ include "pullsecret-injector.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "pullsecret-injector.labels" -}}
helm.sh/chart: {{ include "pullsecret-injector.chart" . }}
{{ include "pullsecret-injector.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/* The Service, ServiceAccount and webhook server name. */}}
{{- define "pullsecret-injector.serviceName" -}}
{{- include "pullsecret-injector.fullname" . }}
{{- end }}

{{/* The injector's image. No image is published for the source chart: rendering stops with
how to get one instead of a Deployment whose Pods never start (ImagePullBackOff). */}}
{{- define "pullsecret-injector.image" -}}
{{- $repository := required "image.repository is required: build the injector's image with scripts/build-image.sh (docs/install.md, \"The injector's image\") and pass --set image.repository=REGISTRY/pullsecret-injector (with image.tag or image.digest)" .Values.image.repository }}
{{- if .Values.image.digest }}
{{- printf "%s@%s" $repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" $repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/* Name of the Secret holding tls.crt and tls.key. */}}
{{- define "pullsecret-injector.tlsSecretName" -}}
{{- default (printf "%s-tls" (include "pullsecret-injector.fullname" .)) .Values.tls.secretName }}
{{- end }}

{{/* DNS names the serving certificate must carry (the API server calls svc.ns.svc). */}}
{{- define "pullsecret-injector.dnsNames" -}}
{{- $svc := include "pullsecret-injector.serviceName" . }}
{{- $ns := .Release.Namespace }}
{{- list $svc (printf "%s.%s" $svc $ns) (printf "%s.%s.svc" $svc $ns) (printf "%s.%s.svc.cluster.local" $svc $ns) | toJson }}
{{- end }}

{{/*
Namespaces that no webhook entry may ever match: the control plane's, the release
namespace (the webhook's own Pods) and config.namespaces.exclude. JSON list.
*/}}
{{- define "pullsecret-injector.excludedNamespaces" -}}
{{- $l := list "kube-system" "kube-node-lease" .Release.Namespace }}
{{- range .Values.config.namespaces.exclude }}{{ $l = append $l . }}{{ end }}
{{- $l | uniq | toJson }}
{{- end }}

{{/*
Helm-generated TLS material (tls.source=helm), created once per render and shared by the
Secret, the webhook caBundle and the Deployment checksum. On upgrade the existing Secret is
reused (lookup), so the CA and caBundle do not change. Returns JSON {ca, crt, key}.
*/}}
{{- define "pullsecret-injector.helmTLS" -}}
{{- /*
tls.source=helm: a CA kept in a Secret of its own (<fullname>-ca, never mounted), and a serving
certificate it signs (the TLS Secret). Both are read back on upgrade. Deleting only the TLS
Secret and upgrading re-signs a new serving certificate with the same CA, so the caBundle does
not change and Pods still serving the old certificate stay trusted while the rollout replaces
them: no admission fails. A new CA is made only when the CA Secret is missing.
*/}}
{{- if not (hasKey $ "pullsecretInjectorTLS") }}
{{- $fullname := include "pullsecret-injector.fullname" . }}
{{- $days := int .Values.tls.helm.validityDays }}
{{- $caSecret := lookup "v1" "Secret" .Release.Namespace (printf "%s-ca" $fullname) }}
{{- $ca := dict }}
{{- if and $caSecret $caSecret.data (hasKey $caSecret.data "ca.crt") (hasKey $caSecret.data "ca.key") }}
{{- $ca = buildCustomCert (index $caSecret.data "ca.crt") (index $caSecret.data "ca.key") }}
{{- else }}
{{- $ca = genCA (printf "%s-ca" $fullname) $days }}
{{- end }}
{{- $existing := lookup "v1" "Secret" .Release.Namespace (include "pullsecret-injector.tlsSecretName" .) }}
{{- $tls := dict }}
{{- if and $existing $existing.data (hasKey $existing.data "tls.crt") (hasKey $existing.data "tls.key") (eq (index $existing.data "ca.crt" | default "" | b64dec) $ca.Cert) }}
{{- $tls = dict "ca" $ca.Cert "caKey" $ca.Key "crt" (index $existing.data "tls.crt" | b64dec) "key" (index $existing.data "tls.key" | b64dec) }}
{{- else }}
{{- $svc := include "pullsecret-injector.serviceName" . }}
{{- $cn := printf "%s.%s.svc" $svc .Release.Namespace }}
{{- $cert := genSignedCert $cn nil (include "pullsecret-injector.dnsNames" . | fromJsonArray) $days $ca }}
{{- $tls = dict "ca" $ca.Cert "caKey" $ca.Key "crt" $cert.Cert "key" $cert.Key }}
{{- end }}
{{- $_ := set $ "pullsecretInjectorTLS" $tls }}
{{- end }}
{{- index $ "pullsecretInjectorTLS" | toJson }}
{{- end }}

{{/* caBundle for the webhook configuration (base64 PEM); empty for cert-manager (cainjector fills it). */}}
{{- define "pullsecret-injector.caBundle" -}}
{{- if eq .Values.tls.source "helm" }}
{{- (include "pullsecret-injector.helmTLS" . | fromJson).ca | b64enc }}
{{- else if eq .Values.tls.source "secret" }}
{{- .Values.tls.caBundle }}
{{- end }}
{{- end }}

{{/* Name of the cert-manager Certificate for the serving cert (for cert-manager.io/inject-ca-from). */}}
{{- define "pullsecret-injector.certificateName" -}}
{{- printf "%s-serving" (include "pullsecret-injector.fullname" .) }}
{{- end }}

{{/* Does the binary talk to the Kubernetes API? */}}
{{- define "pullsecret-injector.needsAPI" -}}
{{- if not .Values.standalone }}true{{ end }}
{{- end }}

{{/*
Render-time checks for combinations a JSON schema cannot express (or expresses with
unclear messages). Each message names the value to fix.
*/}}
{{- define "pullsecret-injector.validate" -}}
{{- $v := .Values }}
{{- if lt (int $v.replicaCount) 1 }}
{{- fail (printf "replicaCount must be at least 1 (got %v)" $v.replicaCount) }}
{{- end }}
{{- $t := int $v.webhook.timeoutSeconds }}
{{- if or (lt $t 1) (gt $t 30) }}
{{- fail (printf "webhook.timeoutSeconds must be between 1 and 30 (got %v)" $v.webhook.timeoutSeconds) }}
{{- end }}
{{- if not (has $v.webhook.failurePolicy (list "Ignore" "Fail")) }}
{{- fail (printf "webhook.failurePolicy must be Ignore or Fail (got %q)" (toString $v.webhook.failurePolicy)) }}
{{- end }}
{{- if not (has $v.config.mode (list "enforce" "audit")) }}
{{- fail (printf "config.mode must be enforce or audit (got %q)" (toString $v.config.mode)) }}
{{- end }}
{{- if not (has $v.config.namespaces.selection (list "opt-in" "all")) }}
{{- fail (printf "config.namespaces.selection must be opt-in or all (got %q)" (toString $v.config.namespaces.selection)) }}
{{- end }}
{{- if and (eq $v.config.namespaces.selection "all") (not (semverCompare ">=1.21-0" .Capabilities.KubeVersion.Version)) }}
{{- fail (printf "config.namespaces.selection=all needs Kubernetes 1.21+ (this is %s): older API servers do not set the kubernetes.io/metadata.name label the webhook uses to exclude kube-system and %s; use opt-in" .Capabilities.KubeVersion.Version .Release.Namespace) }}
{{- end }}
{{- if $v.standalone }}
{{- if $v.config.sync }}
{{- fail "config.sync=true needs the Kubernetes API and cannot be used with standalone=true" }}
{{- end }}
{{- if $v.config.discovery }}
{{- fail "config.discovery=true needs the Kubernetes API and cannot be used with standalone=true" }}
{{- end }}
{{- if dig "repair" false $v.config }}
{{- fail "config.repair=true needs the Kubernetes API and cannot be used with standalone=true" }}
{{- end }}
{{- if not $v.config.rules }}
{{- fail "standalone=true uses only static rules: set config.rules (it is empty)" }}
{{- end }}
{{- end }}
{{- if and $v.config.sync (not $v.config.rules) (not $v.config.discovery) }}
{{- fail "config.sync=true has nothing to copy: set config.rules or config.discovery=true" }}
{{- end }}
{{- if and (not $v.config.rules) (not $v.config.discovery) }}
{{- fail "no credentials configured: set config.rules or config.discovery=true" }}
{{- end }}
{{- range $i, $r := $v.config.rules }}
{{- if not $r.registry }}
{{- fail (printf "config.rules[%d].registry is required" $i) }}
{{- end }}
{{- if not $r.secrets }}
{{- fail (printf "config.rules[%d].secrets must list at least one Secret name" $i) }}
{{- end }}
{{- if and $v.standalone $r.namespaceSelector }}
{{- fail (printf "config.rules[%d].namespaceSelector needs namespace labels, which standalone=true cannot read: use namespaces (names or globs)" $i) }}
{{- end }}
{{- end }}
{{- $src := $v.tls.source }}
{{- if not (has $src (list "helm" "cert-manager" "secret")) }}
{{- fail (printf "tls.source must be helm, cert-manager or secret (got %q)" (toString $src)) }}
{{- end }}
{{- if eq $src "secret" }}
{{- if not $v.tls.secretName }}
{{- fail "tls.source=secret needs tls.secretName (an existing kubernetes.io/tls Secret in the release namespace)" }}
{{- end }}
{{- if not $v.tls.caBundle }}
{{- fail "tls.source=secret needs tls.caBundle (base64 PEM of the CA that signed tls.secretName)" }}
{{- end }}
{{- if not (contains "-----BEGIN CERTIFICATE-----" (b64dec $v.tls.caBundle)) }}
{{- fail "tls.caBundle must be a base64-encoded PEM certificate bundle (e.g. base64 -w0 ca.crt)" }}
{{- end }}
{{- else if $v.tls.caBundle }}
{{- fail (printf "tls.caBundle is only used with tls.source=secret (tls.source=%s provides its own CA): remove tls.caBundle" $src) }}
{{- end }}
{{- if and $v.tls.certManager.issuerRef (ne $src "cert-manager") }}
{{- fail (printf "tls.certManager.issuerRef is only used with tls.source=cert-manager (got tls.source=%s)" $src) }}
{{- end }}
{{- if and (eq $src "cert-manager") $v.tls.certManager.issuerRef (not $v.tls.certManager.issuerRef.name) }}
{{- fail "tls.certManager.issuerRef.name is required when tls.certManager.issuerRef is set" }}
{{- end }}
{{- if and $v.networkPolicy.adminFrom (not $v.networkPolicy.enabled) }}
{{- fail "networkPolicy.adminFrom is set but networkPolicy.enabled=false" }}
{{- end }}
{{- if and $v.networkPolicy.webhookFrom (not $v.networkPolicy.enabled) }}
{{- fail "networkPolicy.webhookFrom is set but networkPolicy.enabled=false" }}
{{- end }}
{{- include "pullsecret-injector.validateProviders" . }}
{{- end }}

{{/* config.credentialProviders and the credentialProviders values that deliver the plugins. */}}
{{- define "pullsecret-injector.validateProviders" -}}
{{- $v := .Values }}
{{- $cp := dig "credentialProviders" dict $v.config }}
{{- $providers := dig "providers" list $cp }}
{{- if $providers }}
{{- if $v.standalone }}
{{- fail "config.credentialProviders needs the Kubernetes API (the controller writes the providers' Secrets) and cannot be used with standalone=true" }}
{{- end }}
{{- $src := $v.credentialProviders.source }}
{{- if not (has $src (list "initContainer" "imageVolume")) }}
{{- fail (printf "credentialProviders.source must be initContainer or imageVolume (got %q)" (toString $src)) }}
{{- end }}
{{- $_ := include "pullsecret-injector.providersImage" . }}
{{- $bin := toString (dig "binDir" "" $cp) }}
{{- $clean := clean $bin }}
{{- if or (not (hasPrefix "/" $bin)) (eq $clean "/") (eq $clean "/etc/pullsecret-injector") (hasPrefix "/etc/pullsecret-injector/" $clean) }}
{{- fail (printf "config.credentialProviders.binDir must be an absolute directory of its own, not / nor under /etc/pullsecret-injector (the config mount): the chart mounts the plugins there (got %q)" $bin) }}
{{- end }}
{{- $path := toString $v.credentialProviders.path }}
{{- if not (hasPrefix "/" $path) }}
{{- fail (printf "credentialProviders.path must be the absolute directory inside credentialProviders.image holding the executables (got %q)" $path) }}
{{- end }}
{{- if and (eq $src "initContainer") (not $v.credentialProviders.initContainer.command) (eq (clean $path) "/") }}
{{- fail "credentialProviders.path is /: the init container would copy the plugins' whole image; put the executables in a directory of their own (or use credentialProviders.source=imageVolume)" }}
{{- end }}
{{- if and (eq $src "initContainer") (not $v.credentialProviders.initContainer.command) (or (eq (clean $path) $clean) (hasPrefix (printf "%s/" $clean) (clean $path))) }}
{{- fail (printf "credentialProviders.path (%s) is inside config.credentialProviders.binDir (%s), where the init container mounts the emptyDir it copies into: choose another binDir" $path $bin) }}
{{- end }}
{{- if and (eq $src "imageVolume") (not (semverCompare ">=1.33-0" .Capabilities.KubeVersion.Version)) }}
{{- fail (printf "credentialProviders.source=imageVolume needs Kubernetes 1.33+ (image volumes with subPath; the ImageVolume feature gate is on by default from 1.35); this is %s: use credentialProviders.source=initContainer" .Capabilities.KubeVersion.Version) }}
{{- end }}
{{- $secrets := list }}
{{- range $i, $p := $providers }}
{{- if not (and (kindIs "map" $p) $p.name) }}
{{- fail (printf "config.credentialProviders.providers[%d].name is required: the executable's file name in binDir" $i) }}
{{- end }}
{{- if contains "/" (toString $p.name) }}
{{- fail (printf "config.credentialProviders.providers[%d].name must be a file name in binDir, without '/' (got %q)" $i (toString $p.name)) }}
{{- end }}
{{- if not $p.secret }}
{{- fail (printf "config.credentialProviders.providers[%d].secret is required: the Secret (release namespace) the controller keeps filled; its RBAC names it" $i) }}
{{- end }}
{{- if has $p.secret $secrets }}
{{- fail (printf "config.credentialProviders.providers[%d].secret %q is already another provider's: two providers would overwrite each other" $i $p.secret) }}
{{- end }}
{{- $secrets = append $secrets $p.secret }}
{{- end }}
{{- end }}
{{- end }}

{{/*
The controller (`pullsecret-injector controller`): the one process that writes (sync, repair,
credential providers). Rendered only when one of those features is on; "true" or "".
*/}}
{{- define "pullsecret-injector.controllerEnabled" -}}
{{- $c := .Values.config }}
{{- if and (not .Values.standalone) (or $c.sync (dig "repair" false $c) (dig "credentialProbe" false $c) (include "pullsecret-injector.providersEnabled" .)) }}true{{ end }}
{{- end }}

{{/* config.credentialProviders.providers is set: "true" or "". */}}
{{- define "pullsecret-injector.providersEnabled" -}}
{{- if dig "credentialProviders" "providers" list .Values.config }}true{{ end }}
{{- end }}

{{/* The Secrets config.credentialProviders keeps filled: a JSON list of names. */}}
{{- define "pullsecret-injector.providerSecrets" -}}
{{- $l := list }}
{{- range (dig "credentialProviders" "providers" list .Values.config) }}{{ $l = append $l .secret }}{{ end }}
{{- $l | uniq | toJson }}
{{- end }}

{{/* The image holding the credential-provider plugins (credentialProviders.image). */}}
{{- define "pullsecret-injector.providersImage" -}}
{{- $i := .Values.credentialProviders.image }}
{{- $repository := required "credentialProviders.image.repository is required with config.credentialProviders.providers: name the image holding the plugin executables (docs/short-lived-credentials.md, \"The plugins' image\")" $i.repository }}
{{- if $i.digest }}
{{- printf "%s@%s" $repository $i.digest }}
{{- else if $i.tag }}
{{- printf "%s:%s" $repository $i.tag }}
{{- else }}
{{- fail "credentialProviders.image.tag or credentialProviders.image.digest is required: the plugins run with the controller's identity, pin the image that holds them" }}
{{- end }}
{{- end }}

{{/* credentialProviders.path without its leading slash: the image volume's subPath ("" for /). */}}
{{- define "pullsecret-injector.providersSubPath" -}}
{{- trimSuffix "/" (trimPrefix "/" .Values.credentialProviders.path) }}
{{- end }}

{{/* Name of the controller's Deployment, ServiceAccount, RBAC objects and metrics Service. */}}
{{- define "pullsecret-injector.controllerName" -}}
{{- printf "%s-controller" (include "pullsecret-injector.fullname" . | trunc 52 | trimSuffix "-") }}
{{- end }}

{{/*
Selector labels of the controller's Pods. Its own app.kubernetes.io/name, so that the webhook's
Service, PodDisruptionBudget, NetworkPolicy and Deployment selector (name + instance) never
match a controller Pod (the webhook Service must not send admission calls to it).
*/}}
{{- define "pullsecret-injector.controllerSelectorLabels" -}}
app.kubernetes.io/name: {{ printf "%s-controller" (include "pullsecret-injector.name" . | trunc 52 | trimSuffix "-") }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}
