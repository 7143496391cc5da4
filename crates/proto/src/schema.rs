//! Field-number tables for the Kubernetes messages kubectl's typed clients send.
//!
//! The numbers restate upstream's `generated.proto` files (k8s.io/api core/v1, apps/v1, batch/v1,
//! policy/v1 and k8s.io/apimachinery meta/v1, util/intstr, api/resource). A message lists only the
//! fields rkube understands; anything else on the wire is refused by the decoder.
//!
//! `keep` marks fields whose zero value must survive into JSON: Go pointer fields (`*int32`,
//! `*bool`, `*string`), where presence on the wire means "explicitly set", and value fields
//! without `omitempty` that callers expect to see. Every other scalar follows `omitempty`, because
//! gogo-protobuf writes non-pointer fields even when they hold their zero value.

/// How one field's payload turns into JSON.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Ty {
    String,
    Int32,
    Int64,
    Bool,
    /// A nested JSON object.
    Message(&'static Message),
    /// A Go embedded struct (`json:",inline"`): its fields land in the parent object.
    Inline(&'static Message),
    /// `intstr.IntOrString`, rendered as a bare number or string.
    IntOrString,
    /// `resource.Quantity`, rendered as its canonical string.
    Quantity,
    /// `meta/v1.Time`, RFC 3339 with second precision; the zero time is omitted.
    Time,
    StringMap,
    /// `map<string, bytes>`, values rendered as base64 strings.
    BytesMap,
    /// `map<string, Quantity>`.
    QuantityMap,
    /// A real upstream field rkube deliberately does not translate; decoding fails if present.
    Unsupported,
}

#[derive(Clone, Copy, Debug)]
pub(crate) struct Field {
    pub(crate) number: u32,
    pub(crate) json: &'static str,
    pub(crate) ty: Ty,
    pub(crate) repeated: bool,
    pub(crate) keep_zero: bool,
}

impl Field {
    const fn rep(mut self) -> Self {
        self.repeated = true;
        self
    }

    const fn keep(mut self) -> Self {
        self.keep_zero = true;
        self
    }
}

#[derive(Debug)]
pub(crate) struct Message {
    /// Upstream message name, used in error messages.
    pub(crate) name: &'static str,
    pub(crate) fields: &'static [Field],
}

impl Message {
    pub(crate) fn field(&self, number: u32) -> Option<&Field> {
        self.fields.iter().find(|field| field.number == number)
    }
}

const fn field(number: u32, json: &'static str, ty: Ty) -> Field {
    Field {
        number,
        json,
        ty,
        repeated: false,
        keep_zero: false,
    }
}
const fn s(number: u32, json: &'static str) -> Field {
    field(number, json, Ty::String)
}
const fn i32f(number: u32, json: &'static str) -> Field {
    field(number, json, Ty::Int32)
}
const fn i64f(number: u32, json: &'static str) -> Field {
    field(number, json, Ty::Int64)
}
const fn b(number: u32, json: &'static str) -> Field {
    field(number, json, Ty::Bool)
}
const fn m(number: u32, json: &'static str, message: &'static Message) -> Field {
    field(number, json, Ty::Message(message))
}
const fn inline(number: u32, message: &'static Message) -> Field {
    field(number, "", Ty::Inline(message))
}
const fn ios(number: u32, json: &'static str) -> Field {
    field(number, json, Ty::IntOrString)
}
const fn qty(number: u32, json: &'static str) -> Field {
    field(number, json, Ty::Quantity)
}
const fn time(number: u32, json: &'static str) -> Field {
    field(number, json, Ty::Time)
}
const fn smap(number: u32, json: &'static str) -> Field {
    field(number, json, Ty::StringMap)
}
const fn bmap(number: u32, json: &'static str) -> Field {
    field(number, json, Ty::BytesMap)
}
const fn qmap(number: u32, json: &'static str) -> Field {
    field(number, json, Ty::QuantityMap)
}
const fn unsupported(number: u32, json: &'static str) -> Field {
    field(number, json, Ty::Unsupported)
}

const fn msg(name: &'static str, fields: &'static [Field]) -> Message {
    Message { name, fields }
}

// ---------------------------------------------------------------- envelope (runtime)

pub(crate) static TYPE_META: Message = msg("runtime.TypeMeta", &[s(1, "apiVersion"), s(2, "kind")]);

// ---------------------------------------------------------------- meta/v1

pub(crate) static OWNER_REFERENCE: Message = msg(
    "meta.v1.OwnerReference",
    &[
        s(1, "kind"),
        s(3, "name"),
        s(4, "uid"),
        s(5, "apiVersion"),
        b(6, "controller").keep(),
        b(7, "blockOwnerDeletion").keep(),
    ],
);

pub(crate) static OBJECT_META: Message = msg(
    "meta.v1.ObjectMeta",
    &[
        s(1, "name"),
        s(2, "generateName"),
        s(3, "namespace"),
        s(4, "selfLink"),
        s(5, "uid"),
        s(6, "resourceVersion"),
        i64f(7, "generation"),
        time(8, "creationTimestamp"),
        time(9, "deletionTimestamp"),
        i64f(10, "deletionGracePeriodSeconds").keep(),
        smap(11, "labels"),
        smap(12, "annotations"),
        m(13, "ownerReferences", &OWNER_REFERENCE).rep(),
        s(14, "finalizers").rep(),
        unsupported(17, "managedFields"),
    ],
);

pub(crate) static LABEL_SELECTOR_REQUIREMENT: Message = msg(
    "meta.v1.LabelSelectorRequirement",
    &[
        s(1, "key").keep(),
        s(2, "operator").keep(),
        s(3, "values").rep(),
    ],
);

pub(crate) static LABEL_SELECTOR: Message = msg(
    "meta.v1.LabelSelector",
    &[
        smap(1, "matchLabels"),
        m(2, "matchExpressions", &LABEL_SELECTOR_REQUIREMENT).rep(),
    ],
);

pub(crate) static PRECONDITIONS: Message = msg(
    "meta.v1.Preconditions",
    &[s(1, "uid").keep(), s(2, "resourceVersion").keep()],
);

pub(crate) static DELETE_OPTIONS: Message = msg(
    "meta.v1.DeleteOptions",
    &[
        i64f(1, "gracePeriodSeconds").keep(),
        m(2, "preconditions", &PRECONDITIONS),
        b(3, "orphanDependents").keep(),
        s(4, "propagationPolicy").keep(),
        s(5, "dryRun").rep(),
    ],
);

// ---------------------------------------------------------------- core/v1: references

pub(crate) static LOCAL_OBJECT_REFERENCE: Message =
    msg("core.v1.LocalObjectReference", &[s(1, "name")]);

pub(crate) static OBJECT_REFERENCE: Message = msg(
    "core.v1.ObjectReference",
    &[
        s(1, "kind"),
        s(2, "namespace"),
        s(3, "name"),
        s(4, "uid"),
        s(5, "apiVersion"),
        s(6, "resourceVersion"),
        s(7, "fieldPath"),
    ],
);

// ---------------------------------------------------------------- core/v1: Namespace

pub(crate) static NAMESPACE_SPEC: Message =
    msg("core.v1.NamespaceSpec", &[s(1, "finalizers").rep()]);

pub(crate) static NAMESPACE_CONDITION: Message = msg(
    "core.v1.NamespaceCondition",
    &[
        s(1, "type"),
        s(2, "status"),
        time(4, "lastTransitionTime"),
        s(5, "reason"),
        s(6, "message"),
    ],
);

pub(crate) static NAMESPACE_STATUS: Message = msg(
    "core.v1.NamespaceStatus",
    &[
        s(1, "phase"),
        m(2, "conditions", &NAMESPACE_CONDITION).rep(),
    ],
);

pub(crate) static NAMESPACE: Message = msg(
    "core.v1.Namespace",
    &[
        m(1, "metadata", &OBJECT_META),
        m(2, "spec", &NAMESPACE_SPEC),
        m(3, "status", &NAMESPACE_STATUS),
    ],
);

// ---------------------------------------------------------------- core/v1: config objects

pub(crate) static CONFIG_MAP: Message = msg(
    "core.v1.ConfigMap",
    &[
        m(1, "metadata", &OBJECT_META),
        smap(2, "data"),
        bmap(3, "binaryData"),
        b(4, "immutable").keep(),
    ],
);

pub(crate) static SECRET: Message = msg(
    "core.v1.Secret",
    &[
        m(1, "metadata", &OBJECT_META),
        bmap(2, "data"),
        s(3, "type"),
        smap(4, "stringData"),
        b(5, "immutable").keep(),
    ],
);

pub(crate) static SERVICE_ACCOUNT: Message = msg(
    "core.v1.ServiceAccount",
    &[
        m(1, "metadata", &OBJECT_META),
        m(2, "secrets", &OBJECT_REFERENCE).rep(),
        m(3, "imagePullSecrets", &LOCAL_OBJECT_REFERENCE).rep(),
        b(4, "automountServiceAccountToken").keep(),
    ],
);

// ---------------------------------------------------------------- core/v1: containers

pub(crate) static CONTAINER_PORT: Message = msg(
    "core.v1.ContainerPort",
    &[
        s(1, "name"),
        i32f(2, "hostPort"),
        i32f(3, "containerPort").keep(),
        s(4, "protocol"),
        s(5, "hostIP"),
    ],
);

pub(crate) static OBJECT_FIELD_SELECTOR: Message = msg(
    "core.v1.ObjectFieldSelector",
    &[s(1, "apiVersion"), s(2, "fieldPath").keep()],
);

pub(crate) static RESOURCE_FIELD_SELECTOR: Message = msg(
    "core.v1.ResourceFieldSelector",
    &[
        s(1, "containerName"),
        s(2, "resource").keep(),
        qty(3, "divisor"),
    ],
);

pub(crate) static CONFIG_MAP_KEY_SELECTOR: Message = msg(
    "core.v1.ConfigMapKeySelector",
    &[
        inline(1, &LOCAL_OBJECT_REFERENCE),
        s(2, "key").keep(),
        b(3, "optional").keep(),
    ],
);

pub(crate) static SECRET_KEY_SELECTOR: Message = msg(
    "core.v1.SecretKeySelector",
    &[
        inline(1, &LOCAL_OBJECT_REFERENCE),
        s(2, "key").keep(),
        b(3, "optional").keep(),
    ],
);

pub(crate) static ENV_VAR_SOURCE: Message = msg(
    "core.v1.EnvVarSource",
    &[
        m(1, "fieldRef", &OBJECT_FIELD_SELECTOR),
        m(2, "resourceFieldRef", &RESOURCE_FIELD_SELECTOR),
        m(3, "configMapKeyRef", &CONFIG_MAP_KEY_SELECTOR),
        m(4, "secretKeyRef", &SECRET_KEY_SELECTOR),
    ],
);

pub(crate) static ENV_VAR: Message = msg(
    "core.v1.EnvVar",
    &[
        s(1, "name").keep(),
        s(2, "value"),
        m(3, "valueFrom", &ENV_VAR_SOURCE),
    ],
);

pub(crate) static CONFIG_MAP_ENV_SOURCE: Message = msg(
    "core.v1.ConfigMapEnvSource",
    &[inline(1, &LOCAL_OBJECT_REFERENCE), b(2, "optional").keep()],
);

pub(crate) static SECRET_ENV_SOURCE: Message = msg(
    "core.v1.SecretEnvSource",
    &[inline(1, &LOCAL_OBJECT_REFERENCE), b(2, "optional").keep()],
);

pub(crate) static ENV_FROM_SOURCE: Message = msg(
    "core.v1.EnvFromSource",
    &[
        s(1, "prefix"),
        m(2, "configMapRef", &CONFIG_MAP_ENV_SOURCE),
        m(3, "secretRef", &SECRET_ENV_SOURCE),
    ],
);

pub(crate) static RESOURCE_REQUIREMENTS: Message = msg(
    "core.v1.ResourceRequirements",
    &[
        qmap(1, "limits"),
        qmap(2, "requests"),
        unsupported(3, "claims"),
    ],
);

pub(crate) static VOLUME_MOUNT: Message = msg(
    "core.v1.VolumeMount",
    &[
        s(1, "name").keep(),
        b(2, "readOnly"),
        s(3, "mountPath").keep(),
        s(4, "subPath"),
        s(5, "mountPropagation").keep(),
        s(6, "subPathExpr"),
    ],
);

pub(crate) static VOLUME_DEVICE: Message = msg(
    "core.v1.VolumeDevice",
    &[s(1, "name").keep(), s(2, "devicePath").keep()],
);

pub(crate) static CAPABILITIES: Message = msg(
    "core.v1.Capabilities",
    &[s(1, "add").rep(), s(2, "drop").rep()],
);

pub(crate) static SE_LINUX_OPTIONS: Message = msg(
    "core.v1.SELinuxOptions",
    &[s(1, "user"), s(2, "role"), s(3, "type"), s(4, "level")],
);

pub(crate) static SECCOMP_PROFILE: Message = msg(
    "core.v1.SeccompProfile",
    &[s(1, "type").keep(), s(2, "localhostProfile").keep()],
);

pub(crate) static SECURITY_CONTEXT: Message = msg(
    "core.v1.SecurityContext",
    &[
        m(1, "capabilities", &CAPABILITIES),
        b(2, "privileged").keep(),
        m(3, "seLinuxOptions", &SE_LINUX_OPTIONS),
        i64f(4, "runAsUser").keep(),
        b(5, "runAsNonRoot").keep(),
        b(6, "readOnlyRootFilesystem").keep(),
        b(7, "allowPrivilegeEscalation").keep(),
        i64f(8, "runAsGroup").keep(),
        s(9, "procMount").keep(),
        unsupported(10, "windowsOptions"),
        m(11, "seccompProfile", &SECCOMP_PROFILE),
    ],
);

pub(crate) static EXEC_ACTION: Message = msg("core.v1.ExecAction", &[s(1, "command").rep()]);

pub(crate) static HTTP_HEADER: Message = msg(
    "core.v1.HTTPHeader",
    &[s(1, "name").keep(), s(2, "value").keep()],
);

pub(crate) static HTTP_GET_ACTION: Message = msg(
    "core.v1.HTTPGetAction",
    &[
        s(1, "path"),
        ios(2, "port"),
        s(3, "host"),
        s(4, "scheme"),
        m(5, "httpHeaders", &HTTP_HEADER).rep(),
    ],
);

pub(crate) static TCP_SOCKET_ACTION: Message =
    msg("core.v1.TCPSocketAction", &[ios(1, "port"), s(2, "host")]);

/// Called `Handler` in older releases and `ProbeHandler` in newer ones; the numbers are the same.
pub(crate) static PROBE_HANDLER: Message = msg(
    "core.v1.ProbeHandler",
    &[
        m(1, "exec", &EXEC_ACTION),
        m(2, "httpGet", &HTTP_GET_ACTION),
        m(3, "tcpSocket", &TCP_SOCKET_ACTION),
    ],
);

pub(crate) static PROBE: Message = msg(
    "core.v1.Probe",
    &[
        inline(1, &PROBE_HANDLER),
        i32f(2, "initialDelaySeconds"),
        i32f(3, "timeoutSeconds"),
        i32f(4, "periodSeconds"),
        i32f(5, "successThreshold"),
        i32f(6, "failureThreshold"),
        i64f(7, "terminationGracePeriodSeconds").keep(),
    ],
);

pub(crate) static CONTAINER: Message = msg(
    "core.v1.Container",
    &[
        s(1, "name").keep(),
        s(2, "image"),
        s(3, "command").rep(),
        s(4, "args").rep(),
        s(5, "workingDir"),
        m(6, "ports", &CONTAINER_PORT).rep(),
        m(7, "env", &ENV_VAR).rep(),
        m(8, "resources", &RESOURCE_REQUIREMENTS),
        m(9, "volumeMounts", &VOLUME_MOUNT).rep(),
        m(10, "livenessProbe", &PROBE),
        m(11, "readinessProbe", &PROBE),
        unsupported(12, "lifecycle"),
        s(13, "terminationMessagePath"),
        s(14, "imagePullPolicy"),
        m(15, "securityContext", &SECURITY_CONTEXT),
        b(16, "stdin"),
        b(17, "stdinOnce"),
        b(18, "tty"),
        m(19, "envFrom", &ENV_FROM_SOURCE).rep(),
        s(20, "terminationMessagePolicy"),
        m(21, "volumeDevices", &VOLUME_DEVICE).rep(),
        m(22, "startupProbe", &PROBE),
    ],
);

// ---------------------------------------------------------------- core/v1: volumes

pub(crate) static KEY_TO_PATH: Message = msg(
    "core.v1.KeyToPath",
    &[
        s(1, "key").keep(),
        s(2, "path").keep(),
        i32f(3, "mode").keep(),
    ],
);

pub(crate) static HOST_PATH_VOLUME_SOURCE: Message = msg(
    "core.v1.HostPathVolumeSource",
    &[s(1, "path").keep(), s(2, "type").keep()],
);

pub(crate) static EMPTY_DIR_VOLUME_SOURCE: Message = msg(
    "core.v1.EmptyDirVolumeSource",
    &[s(1, "medium"), qty(2, "sizeLimit")],
);

pub(crate) static SECRET_VOLUME_SOURCE: Message = msg(
    "core.v1.SecretVolumeSource",
    &[
        s(1, "secretName"),
        m(2, "items", &KEY_TO_PATH).rep(),
        i32f(3, "defaultMode").keep(),
        b(4, "optional").keep(),
    ],
);

pub(crate) static CONFIG_MAP_VOLUME_SOURCE: Message = msg(
    "core.v1.ConfigMapVolumeSource",
    &[
        inline(1, &LOCAL_OBJECT_REFERENCE),
        m(2, "items", &KEY_TO_PATH).rep(),
        i32f(3, "defaultMode").keep(),
        b(4, "optional").keep(),
    ],
);

pub(crate) static PERSISTENT_VOLUME_CLAIM_VOLUME_SOURCE: Message = msg(
    "core.v1.PersistentVolumeClaimVolumeSource",
    &[s(1, "claimName").keep(), b(2, "readOnly")],
);

/// Only the volume sources a single-node rkube can serve; the cloud and network ones are refused.
pub(crate) static VOLUME_SOURCE: Message = msg(
    "core.v1.VolumeSource",
    &[
        m(1, "hostPath", &HOST_PATH_VOLUME_SOURCE),
        m(2, "emptyDir", &EMPTY_DIR_VOLUME_SOURCE),
        m(6, "secret", &SECRET_VOLUME_SOURCE),
        m(
            10,
            "persistentVolumeClaim",
            &PERSISTENT_VOLUME_CLAIM_VOLUME_SOURCE,
        ),
        m(19, "configMap", &CONFIG_MAP_VOLUME_SOURCE),
    ],
);

pub(crate) static VOLUME: Message = msg(
    "core.v1.Volume",
    &[s(1, "name").keep(), inline(2, &VOLUME_SOURCE)],
);

// ---------------------------------------------------------------- core/v1: Pod

pub(crate) static TOLERATION: Message = msg(
    "core.v1.Toleration",
    &[
        s(1, "key"),
        s(2, "operator"),
        s(3, "value"),
        s(4, "effect"),
        i64f(5, "tolerationSeconds").keep(),
    ],
);

pub(crate) static SYSCTL: Message = msg(
    "core.v1.Sysctl",
    &[s(1, "name").keep(), s(2, "value").keep()],
);

pub(crate) static POD_SECURITY_CONTEXT: Message = msg(
    "core.v1.PodSecurityContext",
    &[
        m(1, "seLinuxOptions", &SE_LINUX_OPTIONS),
        i64f(2, "runAsUser").keep(),
        b(3, "runAsNonRoot").keep(),
        field(4, "supplementalGroups", Ty::Int64).rep(),
        i64f(5, "fsGroup").keep(),
        i64f(6, "runAsGroup").keep(),
        m(7, "sysctls", &SYSCTL).rep(),
        unsupported(8, "windowsOptions"),
        s(9, "fsGroupChangePolicy").keep(),
        m(10, "seccompProfile", &SECCOMP_PROFILE),
    ],
);

pub(crate) static HOST_ALIAS: Message = msg(
    "core.v1.HostAlias",
    &[s(1, "ip").keep(), s(2, "hostnames").rep()],
);

pub(crate) static POD_DNS_CONFIG_OPTION: Message = msg(
    "core.v1.PodDNSConfigOption",
    &[s(1, "name"), s(2, "value").keep()],
);

pub(crate) static POD_DNS_CONFIG: Message = msg(
    "core.v1.PodDNSConfig",
    &[
        s(1, "nameservers").rep(),
        s(2, "searches").rep(),
        m(3, "options", &POD_DNS_CONFIG_OPTION).rep(),
    ],
);

pub(crate) static POD_READINESS_GATE: Message =
    msg("core.v1.PodReadinessGate", &[s(1, "conditionType").keep()]);

pub(crate) static POD_SPEC: Message = msg(
    "core.v1.PodSpec",
    &[
        m(1, "volumes", &VOLUME).rep(),
        m(2, "containers", &CONTAINER).rep(),
        s(3, "restartPolicy"),
        i64f(4, "terminationGracePeriodSeconds").keep(),
        i64f(5, "activeDeadlineSeconds").keep(),
        s(6, "dnsPolicy"),
        smap(7, "nodeSelector"),
        s(8, "serviceAccountName"),
        s(9, "serviceAccount"),
        s(10, "nodeName"),
        b(11, "hostNetwork"),
        b(12, "hostPID"),
        b(13, "hostIPC"),
        m(14, "securityContext", &POD_SECURITY_CONTEXT),
        m(15, "imagePullSecrets", &LOCAL_OBJECT_REFERENCE).rep(),
        s(16, "hostname"),
        s(17, "subdomain"),
        unsupported(18, "affinity"),
        s(19, "schedulerName"),
        m(20, "initContainers", &CONTAINER).rep(),
        b(21, "automountServiceAccountToken").keep(),
        m(22, "tolerations", &TOLERATION).rep(),
        m(23, "hostAliases", &HOST_ALIAS).rep(),
        s(24, "priorityClassName"),
        i32f(25, "priority").keep(),
        m(26, "dnsConfig", &POD_DNS_CONFIG),
        b(27, "shareProcessNamespace").keep(),
        m(28, "readinessGates", &POD_READINESS_GATE).rep(),
        s(29, "runtimeClassName").keep(),
        b(30, "enableServiceLinks").keep(),
        s(31, "preemptionPolicy").keep(),
        qmap(32, "overhead"),
        unsupported(33, "topologySpreadConstraints"),
        unsupported(34, "ephemeralContainers"),
        b(35, "setHostnameAsFQDN").keep(),
    ],
);

pub(crate) static POD_CONDITION: Message = msg(
    "core.v1.PodCondition",
    &[
        s(1, "type"),
        s(2, "status"),
        time(3, "lastProbeTime"),
        time(4, "lastTransitionTime"),
        s(5, "reason"),
        s(6, "message"),
    ],
);

pub(crate) static POD_IP: Message = msg("core.v1.PodIP", &[s(1, "ip")]);

/// Container statuses are not translated: only kubelets write them, and they use JSON.
pub(crate) static POD_STATUS: Message = msg(
    "core.v1.PodStatus",
    &[
        s(1, "phase"),
        m(2, "conditions", &POD_CONDITION).rep(),
        s(3, "message"),
        s(4, "reason"),
        s(5, "hostIP"),
        s(6, "podIP"),
        time(7, "startTime"),
        unsupported(8, "containerStatuses"),
        s(9, "qosClass"),
        unsupported(10, "initContainerStatuses"),
        s(11, "nominatedNodeName"),
        m(12, "podIPs", &POD_IP).rep(),
        unsupported(13, "ephemeralContainerStatuses"),
    ],
);

pub(crate) static POD: Message = msg(
    "core.v1.Pod",
    &[
        m(1, "metadata", &OBJECT_META),
        m(2, "spec", &POD_SPEC),
        m(3, "status", &POD_STATUS),
    ],
);

pub(crate) static POD_TEMPLATE_SPEC: Message = msg(
    "core.v1.PodTemplateSpec",
    &[m(1, "metadata", &OBJECT_META), m(2, "spec", &POD_SPEC)],
);

// ---------------------------------------------------------------- core/v1: Service

pub(crate) static SERVICE_PORT: Message = msg(
    "core.v1.ServicePort",
    &[
        s(1, "name"),
        s(2, "protocol"),
        i32f(3, "port").keep(),
        ios(4, "targetPort"),
        i32f(5, "nodePort"),
        s(6, "appProtocol").keep(),
    ],
);

pub(crate) static CLIENT_IP_CONFIG: Message = msg(
    "core.v1.ClientIPConfig",
    &[i32f(1, "timeoutSeconds").keep()],
);

pub(crate) static SESSION_AFFINITY_CONFIG: Message = msg(
    "core.v1.SessionAffinityConfig",
    &[m(1, "clientIP", &CLIENT_IP_CONFIG)],
);

pub(crate) static SERVICE_SPEC: Message = msg(
    "core.v1.ServiceSpec",
    &[
        m(1, "ports", &SERVICE_PORT).rep(),
        smap(2, "selector"),
        s(3, "clusterIP"),
        s(4, "type"),
        s(5, "externalIPs").rep(),
        s(7, "sessionAffinity"),
        s(8, "loadBalancerIP"),
        s(9, "loadBalancerSourceRanges").rep(),
        s(10, "externalName"),
        s(11, "externalTrafficPolicy"),
        i32f(12, "healthCheckNodePort"),
        b(13, "publishNotReadyAddresses"),
        m(14, "sessionAffinityConfig", &SESSION_AFFINITY_CONFIG),
        s(17, "ipFamilyPolicy").keep(),
        s(18, "clusterIPs").rep(),
        s(19, "ipFamilies").rep(),
        b(20, "allocateLoadBalancerNodePorts").keep(),
        s(21, "loadBalancerClass").keep(),
        s(22, "internalTrafficPolicy").keep(),
    ],
);

pub(crate) static PORT_STATUS: Message = msg(
    "core.v1.PortStatus",
    &[
        i32f(1, "port").keep(),
        s(2, "protocol").keep(),
        s(3, "error").keep(),
    ],
);

pub(crate) static LOAD_BALANCER_INGRESS: Message = msg(
    "core.v1.LoadBalancerIngress",
    &[
        s(1, "ip"),
        s(2, "hostname"),
        m(4, "ports", &PORT_STATUS).rep(),
    ],
);

pub(crate) static LOAD_BALANCER_STATUS: Message = msg(
    "core.v1.LoadBalancerStatus",
    &[m(1, "ingress", &LOAD_BALANCER_INGRESS).rep()],
);

pub(crate) static SERVICE_STATUS: Message = msg(
    "core.v1.ServiceStatus",
    &[
        m(1, "loadBalancer", &LOAD_BALANCER_STATUS),
        unsupported(2, "conditions"),
    ],
);

pub(crate) static SERVICE: Message = msg(
    "core.v1.Service",
    &[
        m(1, "metadata", &OBJECT_META),
        m(2, "spec", &SERVICE_SPEC),
        m(3, "status", &SERVICE_STATUS),
    ],
);

// ---------------------------------------------------------------- apps/v1

pub(crate) static ROLLING_UPDATE_DEPLOYMENT: Message = msg(
    "apps.v1.RollingUpdateDeployment",
    &[ios(1, "maxUnavailable"), ios(2, "maxSurge")],
);

pub(crate) static DEPLOYMENT_STRATEGY: Message = msg(
    "apps.v1.DeploymentStrategy",
    &[
        s(1, "type"),
        m(2, "rollingUpdate", &ROLLING_UPDATE_DEPLOYMENT),
    ],
);

pub(crate) static DEPLOYMENT_SPEC: Message = msg(
    "apps.v1.DeploymentSpec",
    &[
        i32f(1, "replicas").keep(),
        m(2, "selector", &LABEL_SELECTOR),
        m(3, "template", &POD_TEMPLATE_SPEC),
        m(4, "strategy", &DEPLOYMENT_STRATEGY),
        i32f(5, "minReadySeconds"),
        i32f(6, "revisionHistoryLimit").keep(),
        b(7, "paused"),
        i32f(9, "progressDeadlineSeconds").keep(),
    ],
);

pub(crate) static DEPLOYMENT_CONDITION: Message = msg(
    "apps.v1.DeploymentCondition",
    &[
        s(1, "type"),
        s(2, "status"),
        s(4, "reason"),
        s(5, "message"),
        time(6, "lastUpdateTime"),
        time(7, "lastTransitionTime"),
    ],
);

pub(crate) static DEPLOYMENT_STATUS: Message = msg(
    "apps.v1.DeploymentStatus",
    &[
        i64f(1, "observedGeneration"),
        i32f(2, "replicas"),
        i32f(3, "updatedReplicas"),
        i32f(4, "availableReplicas"),
        i32f(5, "unavailableReplicas"),
        m(6, "conditions", &DEPLOYMENT_CONDITION).rep(),
        i32f(7, "readyReplicas"),
        i32f(8, "collisionCount").keep(),
        i32f(9, "terminatingReplicas").keep(),
    ],
);

pub(crate) static DEPLOYMENT: Message = msg(
    "apps.v1.Deployment",
    &[
        m(1, "metadata", &OBJECT_META),
        m(2, "spec", &DEPLOYMENT_SPEC),
        m(3, "status", &DEPLOYMENT_STATUS),
    ],
);

// ---------------------------------------------------------------- batch/v1

pub(crate) static JOB_SPEC: Message = msg(
    "batch.v1.JobSpec",
    &[
        i32f(1, "parallelism").keep(),
        i32f(2, "completions").keep(),
        i64f(3, "activeDeadlineSeconds").keep(),
        m(4, "selector", &LABEL_SELECTOR),
        b(5, "manualSelector").keep(),
        m(6, "template", &POD_TEMPLATE_SPEC),
        i32f(7, "backoffLimit").keep(),
        i32f(8, "ttlSecondsAfterFinished").keep(),
        s(9, "completionMode").keep(),
        b(10, "suspend").keep(),
        unsupported(11, "podFailurePolicy"),
        i32f(12, "backoffLimitPerIndex").keep(),
        i32f(13, "maxFailedIndexes").keep(),
        s(14, "podReplacementPolicy").keep(),
        s(15, "managedBy").keep(),
        unsupported(16, "successPolicy"),
    ],
);

pub(crate) static JOB_CONDITION: Message = msg(
    "batch.v1.JobCondition",
    &[
        s(1, "type"),
        s(2, "status"),
        time(3, "lastProbeTime"),
        time(4, "lastTransitionTime"),
        s(5, "reason"),
        s(6, "message"),
    ],
);

pub(crate) static UNCOUNTED_TERMINATED_PODS: Message = msg(
    "batch.v1.UncountedTerminatedPods",
    &[s(1, "succeeded").rep(), s(2, "failed").rep()],
);

pub(crate) static JOB_STATUS: Message = msg(
    "batch.v1.JobStatus",
    &[
        m(1, "conditions", &JOB_CONDITION).rep(),
        time(2, "startTime"),
        time(3, "completionTime"),
        i32f(4, "active"),
        i32f(5, "succeeded"),
        i32f(6, "failed"),
        s(7, "completedIndexes"),
        m(8, "uncountedTerminatedPods", &UNCOUNTED_TERMINATED_PODS),
        i32f(9, "ready").keep(),
        s(10, "failedIndexes").keep(),
        i32f(11, "terminating").keep(),
    ],
);

pub(crate) static JOB: Message = msg(
    "batch.v1.Job",
    &[
        m(1, "metadata", &OBJECT_META),
        m(2, "spec", &JOB_SPEC),
        m(3, "status", &JOB_STATUS),
    ],
);

pub(crate) static JOB_TEMPLATE_SPEC: Message = msg(
    "batch.v1.JobTemplateSpec",
    &[m(1, "metadata", &OBJECT_META), m(2, "spec", &JOB_SPEC)],
);

pub(crate) static CRON_JOB_SPEC: Message = msg(
    "batch.v1.CronJobSpec",
    &[
        s(1, "schedule"),
        i64f(2, "startingDeadlineSeconds").keep(),
        s(3, "concurrencyPolicy"),
        b(4, "suspend").keep(),
        m(5, "jobTemplate", &JOB_TEMPLATE_SPEC),
        i32f(6, "successfulJobsHistoryLimit").keep(),
        i32f(7, "failedJobsHistoryLimit").keep(),
        s(8, "timeZone").keep(),
    ],
);

pub(crate) static CRON_JOB_STATUS: Message = msg(
    "batch.v1.CronJobStatus",
    &[
        m(1, "active", &OBJECT_REFERENCE).rep(),
        time(4, "lastScheduleTime"),
        time(5, "lastSuccessfulTime"),
    ],
);

pub(crate) static CRON_JOB: Message = msg(
    "batch.v1.CronJob",
    &[
        m(1, "metadata", &OBJECT_META),
        m(2, "spec", &CRON_JOB_SPEC),
        m(3, "status", &CRON_JOB_STATUS),
    ],
);

// ---------------------------------------------------------------- policy/v1

pub(crate) static EVICTION: Message = msg(
    "policy.v1.Eviction",
    &[
        m(1, "metadata", &OBJECT_META),
        m(2, "deleteOptions", &DELETE_OPTIONS),
    ],
);

pub(crate) static POD_DISRUPTION_BUDGET_SPEC: Message = msg(
    "policy.v1.PodDisruptionBudgetSpec",
    &[
        ios(1, "minAvailable"),
        m(2, "selector", &LABEL_SELECTOR),
        ios(3, "maxUnavailable"),
        s(4, "unhealthyPodEvictionPolicy").keep(),
    ],
);

pub(crate) static POD_DISRUPTION_BUDGET_STATUS: Message = msg(
    "policy.v1.PodDisruptionBudgetStatus",
    &[
        i64f(1, "observedGeneration"),
        unsupported(2, "disruptedPods"),
        i32f(3, "disruptionsAllowed").keep(),
        i32f(4, "currentHealthy").keep(),
        i32f(5, "desiredHealthy").keep(),
        i32f(6, "expectedPods").keep(),
        unsupported(7, "conditions"),
    ],
);

pub(crate) static POD_DISRUPTION_BUDGET: Message = msg(
    "policy.v1.PodDisruptionBudget",
    &[
        m(1, "metadata", &OBJECT_META),
        m(2, "spec", &POD_DISRUPTION_BUDGET_SPEC),
        m(3, "status", &POD_DISRUPTION_BUDGET_STATUS),
    ],
);

// ---------------------------------------------------------------- top-level kinds

/// Which `apiVersion` values a top-level kind is accepted under.
#[derive(Clone, Copy, Debug)]
enum Versions {
    Exactly(&'static [&'static str]),
    /// `DeleteOptions` is registered in every group and arrives with the target's apiVersion.
    Any,
}

struct TopLevel {
    kind: &'static str,
    versions: Versions,
    message: &'static Message,
}

static TOP_LEVEL: &[TopLevel] = &[
    TopLevel {
        kind: "Namespace",
        versions: Versions::Exactly(&["v1"]),
        message: &NAMESPACE,
    },
    TopLevel {
        kind: "ConfigMap",
        versions: Versions::Exactly(&["v1"]),
        message: &CONFIG_MAP,
    },
    TopLevel {
        kind: "Secret",
        versions: Versions::Exactly(&["v1"]),
        message: &SECRET,
    },
    TopLevel {
        kind: "ServiceAccount",
        versions: Versions::Exactly(&["v1"]),
        message: &SERVICE_ACCOUNT,
    },
    TopLevel {
        kind: "Pod",
        versions: Versions::Exactly(&["v1"]),
        message: &POD,
    },
    TopLevel {
        kind: "Service",
        versions: Versions::Exactly(&["v1"]),
        message: &SERVICE,
    },
    TopLevel {
        kind: "Deployment",
        versions: Versions::Exactly(&["apps/v1"]),
        message: &DEPLOYMENT,
    },
    TopLevel {
        kind: "Job",
        versions: Versions::Exactly(&["batch/v1"]),
        message: &JOB,
    },
    TopLevel {
        kind: "CronJob",
        versions: Versions::Exactly(&["batch/v1"]),
        message: &CRON_JOB,
    },
    TopLevel {
        kind: "Eviction",
        // policy/v1beta1 Eviction has the same two fields under the same numbers.
        versions: Versions::Exactly(&["policy/v1", "policy/v1beta1"]),
        message: &EVICTION,
    },
    TopLevel {
        kind: "PodDisruptionBudget",
        versions: Versions::Exactly(&["policy/v1"]),
        message: &POD_DISRUPTION_BUDGET,
    },
    TopLevel {
        kind: "DeleteOptions",
        versions: Versions::Any,
        message: &DELETE_OPTIONS,
    },
];

/// The message describing `kind` under `api_version`, if rkube translates it.
pub(crate) fn top_level(api_version: &str, kind: &str) -> Option<&'static Message> {
    TOP_LEVEL
        .iter()
        .find(|entry| {
            entry.kind == kind
                && match entry.versions {
                    Versions::Any => true,
                    Versions::Exactly(versions) => versions.contains(&api_version),
                }
        })
        .map(|entry| entry.message)
}

/// `(apiVersion, kind)` pairs [`top_level`] accepts; `"*"` means any apiVersion.
pub(crate) fn supported_kinds() -> Vec<(&'static str, &'static str)> {
    let mut kinds = Vec::new();
    for entry in TOP_LEVEL {
        match entry.versions {
            Versions::Any => kinds.push(("*", entry.kind)),
            Versions::Exactly(versions) => {
                kinds.extend(versions.iter().map(|version| (*version, entry.kind)))
            }
        }
    }
    kinds
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Walks every message reachable from the top-level table.
    fn all_messages() -> Vec<&'static Message> {
        let mut seen: Vec<&'static Message> = TOP_LEVEL.iter().map(|e| e.message).collect();
        let mut index = 0;
        while index < seen.len() {
            for field in seen[index].fields {
                if let Ty::Message(next) | Ty::Inline(next) = field.ty {
                    if !seen.iter().any(|known| std::ptr::eq(*known, next)) {
                        seen.push(next);
                    }
                }
            }
            index += 1;
        }
        seen
    }

    #[test]
    fn field_numbers_and_json_names_are_unique_per_message() {
        for message in all_messages() {
            for (i, a) in message.fields.iter().enumerate() {
                for other in &message.fields[i + 1..] {
                    assert_ne!(a.number, other.number, "{} repeats a number", message.name);
                    if !a.json.is_empty() {
                        assert_ne!(a.json, other.json, "{} repeats a name", message.name);
                    }
                }
                assert!(a.number > 0, "{}", message.name);
                assert_eq!(
                    a.json.is_empty(),
                    matches!(a.ty, Ty::Inline(_)),
                    "{}",
                    message.name
                );
            }
        }
    }

    #[test]
    fn lookup_respects_api_version() {
        assert!(top_level("apps/v1", "Deployment").is_some());
        assert!(top_level("apps/v1beta1", "Deployment").is_none());
        assert!(top_level("v1", "Deployment").is_none());
        assert!(top_level("apps/v1", "DeleteOptions").is_some());
        assert!(top_level("v1", "Widget").is_none());
    }
}
