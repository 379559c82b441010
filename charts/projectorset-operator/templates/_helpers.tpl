{{/* Names and labels shared by every template. */}}

{{- define "projectorset-operator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "projectorset-operator.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "projectorset-operator.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "projectorset-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "projectorset-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "projectorset-operator.labels" -}}
helm.sh/chart: {{ include "projectorset-operator.chart" . }}
{{ include "projectorset-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/component: operator
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{/* The test pod's: not the operator's selector labels, or its ReplicaSet would adopt the pod. */}}
{{- define "projectorset-operator.testLabels" -}}
helm.sh/chart: {{ include "projectorset-operator.chart" . }}
app.kubernetes.io/name: {{ include "projectorset-operator.name" . }}-test
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/component: test
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "projectorset-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "projectorset-operator.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* Peering is on only with several replicas: one replica runs standalone. */}}
{{- define "projectorset-operator.peering" -}}
{{- if and .Values.peering.enabled (gt (int .Values.replicaCount) 1) -}}
{{- default (include "projectorset-operator.fullname" .) .Values.peering.name -}}
{{- end -}}
{{- end -}}

{{/* A digest pins the exact image; it wins over the tag. */}}
{{- define "projectorset-operator.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}
{{- end -}}

{{/* Combinations the schema cannot express. */}}
{{- define "projectorset-operator.validate" -}}
{{- if and (eq .Values.rbac.scope "namespaced") (empty .Values.watchNamespaces) -}}
{{- fail "rbac.scope=namespaced needs watchNamespaces: the namespaces to grant access to" -}}
{{- end -}}
{{- if and .Values.metrics.enabled (eq (int .Values.metrics.port) (int .Values.health.port)) -}}
{{- fail "metrics.port and health.port must differ: both servers listen in the same pod" -}}
{{- end -}}
{{- end -}}

{{/*
What the operator does inside the namespaces it manages (kube.py and handlers.py), nothing more:
ProjectorSets are read and watched, patched by Kopf (finalizer, annotations) and their status by
the reconcile loop; Deployments of each version are created, scaled and deleted; stage Jobs are
created, watched and deleted (and read by name when one already exists, to check it is this set's),
and the pods of a failed stage listed and their log's last lines read (the cause of the failure often
sits above a backtrace longer than the termination message keeps); the Service's selector is read and patched; the database Secret is
read; Events are created; Kopf's namespaced peering object (when it watches given namespaces)
is watched and patched.
*/}}
{{- define "projectorset-operator.namespacedRules" -}}
- apiGroups: ["projectorset.io"]
  resources: ["projectorsets"]
  verbs: ["get", "list", "watch", "patch"]
- apiGroups: ["projectorset.io"]
  resources: ["projectorsets/status"]
  verbs: ["get", "patch"]
- apiGroups: ["apps"]
  resources: ["deployments"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
- apiGroups: ["batch"]
  resources: ["jobs"]
  verbs: ["get", "list", "watch", "create", "delete"]
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["list"]
- apiGroups: [""]
  resources: ["pods/log"]
  verbs: ["get"]
- apiGroups: [""]
  resources: ["services"]
  verbs: ["get", "patch"]
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["get"]
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create", "patch"]  # patch: a repeated Event counts up (kube.emit)
{{- if and (include "projectorset-operator.peering" .) .Values.watchNamespaces }}
- apiGroups: ["kopf.dev"]
  resources: ["kopfpeerings"]
  verbs: ["get", "list", "watch", "patch"]
{{- end }}
{{- end -}}

{{/*
Cluster-scoped reads Kopf needs: it discovers resources through the CRDs in every mode; watching
given namespaces, it also lists and watches namespaces (to learn when they appear or go; without
it Kopf retries, warns and assumes they exist); watching all, it needs its ClusterKopfPeering.
*/}}
{{- define "projectorset-operator.clusterRules" -}}
- apiGroups: ["apiextensions.k8s.io"]
  resources: ["customresourcedefinitions"]
  verbs: ["get", "list", "watch"]
{{- if .Values.watchNamespaces }}
- apiGroups: [""]
  resources: ["namespaces"]
  verbs: ["list", "watch"]
{{- else if include "projectorset-operator.peering" . }}
- apiGroups: ["kopf.dev"]
  resources: ["clusterkopfpeerings"]
  verbs: ["get", "list", "watch", "patch"]
{{- end }}
{{- end -}}

{{/*
The CRD is a template (not in crds/) so that `helm upgrade` applies its new fields. Uninstalling
must not delete it: that would delete every ProjectorSet in the cluster.
*/}}
{{- define "projectorset-operator.crdAnnotations" -}}
{{- if .Values.crds.keep -}}
annotations:
  helm.sh/resource-policy: keep
{{- end -}}
{{- end -}}

{{/*
Helm 3 refuses to install over an object another release (or no release) created, with an error
about "invalid ownership metadata". A CRD applied by `make install`/kubectl or by an older chart's
crds/ is such an object: say what to do instead. lookup finds nothing under `helm template`.
*/}}
{{- define "projectorset-operator.crdOwnership" -}}
{{- $root := .root -}}
{{- $existing := lookup "apiextensions.k8s.io/v1" "CustomResourceDefinition" "" .name -}}
{{- if $existing -}}
{{- $annotations := $existing.metadata.annotations | default dict -}}
{{- $labels := $existing.metadata.labels | default dict -}}
{{- $release := get $annotations "meta.helm.sh/release-name" -}}
{{- $namespace := get $annotations "meta.helm.sh/release-namespace" -}}
{{- $managed := eq (get $labels "app.kubernetes.io/managed-by") "Helm" -}}
{{- if not (and $managed (eq $release $root.Release.Name) (eq $namespace $root.Release.Namespace)) -}}
{{- $owner := "no Helm release: kubectl apply, `make install` or an older chart's crds/ created it" -}}
{{- if $release -}}
{{- $owner = printf "release %s in namespace %s; if that release still exists, keep it there and install this one with --set crds.install=false" $release $namespace -}}
{{- end -}}
{{- fail (printf `
CustomResourceDefinition %s already exists and belongs to %s.
Let release %s adopt it (the CRD and every ProjectorSet stay as they are):
  kubectl label crd %s app.kubernetes.io/managed-by=Helm --overwrite
  kubectl annotate crd %s meta.helm.sh/release-name=%s meta.helm.sh/release-namespace=%s --overwrite
or leave the CRD to whoever applies it: --set crds.install=false (then apply each new version yourself).` .name $owner $root.Release.Name .name .name $root.Release.Name $root.Release.Namespace) -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* A label selector's string form (k=v,k=v) from a map of labels. */}}
{{- define "projectorset-operator.selector" -}}
{{- $pairs := list -}}
{{- range $key, $value := . -}}
{{- $pairs = append $pairs (printf "%s=%s" $key $value) -}}
{{- end -}}
{{- join "," $pairs -}}
{{- end -}}
