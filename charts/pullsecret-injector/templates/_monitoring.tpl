{{/*
Helpers for the monitoring objects (prometheusrule.yaml, grafana-dashboard.yaml).
*/}}

{{/*
Names of the webhook entries of the MutatingWebhookConfiguration, as the API server labels its
apiserver_admission_webhook_* metrics (label `name`). JSON list. Must equal the names in
mutatingwebhookconfiguration.yaml: tests/alerts/check_render.py compares them in a render.
*/}}
{{- define "pullsecret-injector.webhookNames" -}}
{{- list "inject.pullsecret-injector.io" "audit.pullsecret-injector.io" | toJson }}
{{- end }}

{{/*
PromQL regex (anchored by Prometheus) matching exactly the webhook names; dots as [.] so that
the string needs no escaping in PromQL, YAML or JSON.
*/}}
{{- define "pullsecret-injector.webhookNameRegex" -}}
{{- $names := list }}
{{- range (include "pullsecret-injector.webhookNames" . | fromJsonArray) }}
{{- $names = append $names (replace "." "[.]" .) }}
{{- end }}
{{- join "|" $names }}
{{- end }}

{{/*
PromQL label matchers selecting this release's own metrics (and its `up` series).
Default: the job and namespace the chart's ServiceMonitor produces (prometheus-operator sets
job to the Service name).
*/}}
{{- define "pullsecret-injector.metricsSelector" -}}
{{- if .Values.metrics.prometheusRule.selector }}
{{- .Values.metrics.prometheusRule.selector }}
{{- else }}
{{- printf "job=%q,namespace=%q" (include "pullsecret-injector.serviceName" .) .Release.Namespace }}
{{- end }}
{{- end }}

{{/*
PromQL label matchers selecting the controller's metrics and `up` series (sync, repair, the
Lease). Default: the job the ServiceMonitor produces for the controller's Service.
*/}}
{{- define "pullsecret-injector.controllerMetricsSelector" -}}
{{- if .Values.metrics.prometheusRule.controllerSelector }}
{{- .Values.metrics.prometheusRule.controllerSelector }}
{{- else }}
{{- printf "job=%q,namespace=%q" (include "pullsecret-injector.controllerName" .) .Release.Namespace }}
{{- end }}
{{- end }}

{{/*
"Did this counter go up in the last window?", robust to counters that start absent: a series
created by its first increment (value 1 at once) has no increase() inside the window, so a
series that exists now with a value above 0, did not exist one window ago, while its target was
being scraped then (up == 1), counts too. The `up` guard keeps a Prometheus restart or a new
target from reading old totals as new events.
Args (dict): m = series selector, w = window, by = sum by labels (string, may be empty).
Renders `sum by (BY) (...) > 0`. (`increase(...) > 0` first: `or` matches label sets without
the metric name, so a 0 from increase() would hide the new series.)
*/}}
{{- define "pullsecret-injector.counterRose" -}}
sum by ({{ .by }}) (
  increase({{ .m }}[{{ .w }}]) > 0
  or
  (({{ .m }} > 0 unless {{ .m }} offset {{ .w }}) and on (job, instance) (up offset {{ .w }} == 1))
) > 0
{{- end }}

{{/* Labels of every alert: severity plus metrics.prometheusRule.alertLabels. Args: root, severity. */}}
{{- define "pullsecret-injector.alertLabels" -}}
severity: {{ .severity }}
{{- with .root.Values.metrics.prometheusRule.alertLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* runbook_url annotation when metrics.prometheusRule.runbookUrl is set. Args: root, alert. */}}
{{- define "pullsecret-injector.runbook" -}}
{{- with .root.Values.metrics.prometheusRule.runbookUrl }}runbook_url: {{ printf "%s#%s" . (lower $.alert) | quote }}{{ end }}
{{- end }}
