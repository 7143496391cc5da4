//! `meta.k8s.io/v1` Table columns and cells per kind, matching upstream's printers so that
//! `kubectl get` output looks the same. Kinds without a printer get NAME and AGE.
//!
//! Cells always include the `priority: 1` (wide) columns, as the API server does; kubectl
//! hides them unless `-o wide`.

mod format;
mod pod;

use chrono::{DateTime, Utc};
use serde_json::{json, Value};

use format::*;
pub use format::{human_duration, since};

/// `name`, `type`, `priority` (1: shown by `-o wide` only) and `description` of a column.
type ColumnSpec = (&'static str, &'static str, u8, &'static str);

/// How `kubectl get` shows one kind: its columns, and the cells of one object's row.
pub struct Printer {
    columns: &'static [ColumnSpec],
    cells: fn(&Value, DateTime<Utc>) -> Vec<Value>,
}

impl Printer {
    /// Column definitions (`name`, `type`, `format`, `description`, `priority`).
    pub fn columns(&self) -> Vec<Value> {
        self.columns
            .iter()
            .map(|(name, ty, priority, description)| {
                let format = if *name == "Name" { "name" } else { "" };
                json!({"name": name, "type": ty, "format": format, "description": description, "priority": priority})
            })
            .collect()
    }

    /// The cells of one row, in column order.
    pub fn cells(&self, obj: &Value, now: DateTime<Utc>) -> Vec<Value> {
        (self.cells)(obj, now)
    }
}

/// Kinds without a printer of their own: NAME and AGE.
pub static DEFAULT: Printer = Printer {
    columns: &[
        ("Name", "string", 0, NAME_DOC),
        ("Age", "string", 0, AGE_DOC),
    ],
    cells: |obj, now| vec![name_cell(obj), age_cell(obj, now)],
};

pub static POD: Printer = Printer {
    columns: &[
        ("Name", "string", 0, NAME_DOC),
        ("Ready", "string", 0, "The aggregate readiness state of this pod for accepting traffic."),
        ("Status", "string", 0, "The aggregate status of the containers in this pod."),
        ("Restarts", "string", 0, "The number of times the containers in this pod have been restarted and when the last container in this pod has restarted."),
        ("Age", "string", 0, AGE_DOC),
        ("IP", "string", 1, "podIP address allocated to the pod."),
        ("Node", "string", 1, "The name of the node the pod is scheduled to."),
        ("Nominated Node", "string", 1, "The node the scheduler nominated for the pod when preempting."),
        ("Readiness Gates", "string", 1, "Pod conditions evaluated for pod readiness."),
    ],
    cells: pod::pod_cells,
};

pub static DEPLOYMENT: Printer = Printer {
    columns: &[
        ("Name", "string", 0, NAME_DOC),
        ("Ready", "string", 0, "Number of the pod with ready state"),
        ("Up-to-date", "string", 0, "Total number of non-terminated pods targeted by this deployment that have the desired template spec."),
        ("Available", "string", 0, "Total number of available pods (ready for at least minReadySeconds) targeted by this deployment."),
        ("Age", "string", 0, AGE_DOC),
        ("Containers", "string", 1, CONTAINERS_DOC),
        ("Images", "string", 1, IMAGES_DOC),
        ("Selector", "string", 1, SELECTOR_DOC),
    ],
    cells: deployment_cells,
};

fn deployment_cells(obj: &Value, now: DateTime<Utc>) -> Vec<Value> {
    let (containers, images) = container_cells(&obj["spec"]["template"]["spec"]);
    vec![
        name_cell(obj),
        json!(format!(
            "{}/{}",
            int_at(obj, &["status", "readyReplicas"]),
            int_at(obj, &["spec", "replicas"])
        )),
        json!(int_at(obj, &["status", "updatedReplicas"])),
        json!(int_at(obj, &["status", "availableReplicas"])),
        age_cell(obj, now),
        json!(containers),
        json!(images),
        json!(selector_text(&obj["spec"]["selector"])),
    ]
}

pub static REPLICA_SET: Printer = Printer {
    columns: &[
        ("Name", "string", 0, NAME_DOC),
        (
            "Desired",
            "integer",
            0,
            "Replicas is the number of desired replicas.",
        ),
        (
            "Current",
            "integer",
            0,
            "Replicas is the most recently observed number of replicas.",
        ),
        (
            "Ready",
            "integer",
            0,
            "The number of ready replicas for this replica set.",
        ),
        ("Age", "string", 0, AGE_DOC),
        ("Containers", "string", 1, CONTAINERS_DOC),
        ("Images", "string", 1, IMAGES_DOC),
        ("Selector", "string", 1, SELECTOR_DOC),
    ],
    cells: replica_set_cells,
};

fn replica_set_cells(obj: &Value, now: DateTime<Utc>) -> Vec<Value> {
    let (containers, images) = container_cells(&obj["spec"]["template"]["spec"]);
    vec![
        name_cell(obj),
        json!(int_at(obj, &["spec", "replicas"])),
        json!(int_at(obj, &["status", "replicas"])),
        json!(int_at(obj, &["status", "readyReplicas"])),
        age_cell(obj, now),
        json!(containers),
        json!(images),
        json!(selector_text(&obj["spec"]["selector"])),
    ]
}

pub static DAEMON_SET: Printer = Printer {
    columns: &[
        ("Name", "string", 0, NAME_DOC),
        ("Desired", "integer", 0, "The total number of nodes that should be running the daemon pod."),
        ("Current", "integer", 0, "The number of nodes that are running at least 1 daemon pod and are supposed to run the daemon pod."),
        ("Ready", "integer", 0, "The number of nodes that should be running the daemon pod and have one or more of the daemon pod running and ready."),
        ("Up-to-date", "integer", 0, "The total number of nodes that are running updated daemon pod"),
        ("Available", "integer", 0, "The number of nodes that should be running the daemon pod and have one or more of the daemon pod running and available."),
        ("Node Selector", "string", 0, "NodeSelector is a selector which must be true for the pod to fit on a node."),
        ("Age", "string", 0, AGE_DOC),
        ("Containers", "string", 1, CONTAINERS_DOC),
        ("Images", "string", 1, IMAGES_DOC),
        ("Selector", "string", 1, SELECTOR_DOC),
    ],
    cells: daemon_set_cells,
};

fn daemon_set_cells(obj: &Value, now: DateTime<Utc>) -> Vec<Value> {
    let (containers, images) = container_cells(&obj["spec"]["template"]["spec"]);
    let status = |f: &str| json!(int_at(obj, &["status", f]));
    vec![
        name_cell(obj),
        status("desiredNumberScheduled"),
        status("currentNumberScheduled"),
        status("numberReady"),
        status("updatedNumberScheduled"),
        status("numberAvailable"),
        json!(format_labels(
            obj["spec"]["template"]["spec"]["nodeSelector"].as_object()
        )),
        age_cell(obj, now),
        json!(containers),
        json!(images),
        json!(selector_text(&obj["spec"]["selector"])),
    ]
}

pub static STATEFUL_SET: Printer = Printer {
    columns: &[
        ("Name", "string", 0, NAME_DOC),
        ("Ready", "string", 0, "Number of the pod with ready state"),
        ("Age", "string", 0, AGE_DOC),
        ("Containers", "string", 1, CONTAINERS_DOC),
        ("Images", "string", 1, IMAGES_DOC),
    ],
    cells: stateful_set_cells,
};

fn stateful_set_cells(obj: &Value, now: DateTime<Utc>) -> Vec<Value> {
    let (containers, images) = container_cells(&obj["spec"]["template"]["spec"]);
    vec![
        name_cell(obj),
        json!(format!(
            "{}/{}",
            int_at(obj, &["status", "readyReplicas"]),
            int_at(obj, &["spec", "replicas"])
        )),
        age_cell(obj, now),
        json!(containers),
        json!(images),
    ]
}

pub static JOB: Printer = Printer {
    columns: &[
        ("Name", "string", 0, NAME_DOC),
        ("Status", "string", 0, "Status of the job."),
        (
            "Completions",
            "string",
            0,
            "The completion status of the job.",
        ),
        (
            "Duration",
            "string",
            0,
            "Time required to complete the job.",
        ),
        ("Age", "string", 0, AGE_DOC),
        ("Containers", "string", 1, CONTAINERS_DOC),
        ("Images", "string", 1, IMAGES_DOC),
        ("Selector", "string", 1, SELECTOR_DOC),
    ],
    cells: job_cells,
};

pub static SERVICE: Printer = Printer {
    columns: &[
        ("Name", "string", 0, NAME_DOC),
        ("Type", "string", 0, "type determines how the Service is exposed."),
        ("Cluster-IP", "string", 0, "clusterIP is the IP address of the service."),
        ("External-IP", "string", 0, "externalIPs is a list of IP addresses for which nodes in the cluster will also accept traffic for this service."),
        ("Port(s)", "string", 0, "The list of ports that are exposed by this service."),
        ("Age", "string", 0, AGE_DOC),
        ("Selector", "string", 1, "Route service traffic to pods with label keys and values matching this selector."),
    ],
    cells: service_cells,
};

pub static ENDPOINTS: Printer = Printer {
    columns: &[
        ("Name", "string", 0, NAME_DOC),
        (
            "Endpoints",
            "string",
            0,
            "The set of all endpoints is the union of all subsets.",
        ),
        ("Age", "string", 0, AGE_DOC),
    ],
    cells: endpoints_cells,
};

fn endpoints_cells(obj: &Value, now: DateTime<Utc>) -> Vec<Value> {
    vec![
        name_cell(obj),
        json!(format_endpoints(obj)),
        age_cell(obj, now),
    ]
}

pub static ENDPOINT_SLICE: Printer = Printer {
    columns: &[
        ("Name", "string", 0, NAME_DOC),
        (
            "AddressType",
            "string",
            0,
            "The type of address carried by this EndpointSlice.",
        ),
        (
            "Ports",
            "string",
            0,
            "The network ports exposed by each endpoint in this slice.",
        ),
        (
            "Endpoints",
            "string",
            0,
            "The list of unique endpoints in this slice.",
        ),
        ("Age", "string", 0, AGE_DOC),
    ],
    cells: endpoint_slice_cells,
};

fn endpoint_slice_cells(obj: &Value, now: DateTime<Utc>) -> Vec<Value> {
    vec![
        name_cell(obj),
        json!(str_at(obj, &["addressType"])),
        json!(format_slice_ports(obj)),
        json!(format_slice_endpoints(obj)),
        age_cell(obj, now),
    ]
}

pub static NODE: Printer = Printer {
    columns: &[
        ("Name", "string", 0, NAME_DOC),
        ("Status", "string", 0, "The status of the node"),
        ("Roles", "string", 0, "The roles of the node"),
        ("Age", "string", 0, AGE_DOC),
        ("Version", "string", 0, "Kubelet Version reported by the node."),
        ("Internal-IP", "string", 1, "List of addresses reachable to the node."),
        ("External-IP", "string", 1, "List of addresses reachable to the node."),
        ("OS-Image", "string", 1, "OS Image reported by the node from /etc/os-release (e.g. Debian GNU/Linux 7 (wheezy))."),
        ("Kernel-Version", "string", 1, "Kernel Version reported by the node from 'uname -r' (e.g. 3.16.0-0.bpo.4-amd64)."),
        ("Container-Runtime", "string", 1, "ContainerRuntime Version reported by the node through runtime remote API (e.g. containerd://1.4.2)."),
    ],
    cells: node_cells,
};

pub static NAMESPACE: Printer = Printer {
    columns: &[
        ("Name", "string", 0, NAME_DOC),
        ("Status", "string", 0, "The status of the namespace"),
        ("Age", "string", 0, AGE_DOC),
    ],
    cells: namespace_cells,
};

fn namespace_cells(obj: &Value, now: DateTime<Utc>) -> Vec<Value> {
    vec![
        name_cell(obj),
        json!(str_at(obj, &["status", "phase"])),
        age_cell(obj, now),
    ]
}

pub static EVENT: Printer = Printer {
    columns: &[
        ("Last Seen", "string", 0, "The time at which the most recent occurrence of this event was recorded."),
        ("Type", "string", 0, "Type of this event (Normal, Warning), new types could be added in the future"),
        ("Reason", "string", 0, "This should be a short, machine understandable string that gives the reason for the transition into the object's current status."),
        ("Object", "string", 0, "The object that this event is about."),
        ("Subobject", "string", 1, "If referring to a piece of an object instead of an entire object, this string should contain a valid JSON/Go field access statement."),
        ("Source", "string", 1, "The component reporting this event."),
        ("Message", "string", 0, "A human-readable description of the status of this operation."),
        ("First Seen", "string", 1, "The time at which the event was first recorded."),
        ("Count", "string", 1, "The number of times this event has occurred."),
        ("Name", "string", 1, NAME_DOC),
    ],
    cells: event_cells,
};

pub static CONFIG_MAP: Printer = Printer {
    columns: &[
        ("Name", "string", 0, NAME_DOC),
        ("Data", "string", 0, "Data contains the configuration data."),
        ("Age", "string", 0, AGE_DOC),
    ],
    cells: config_map_cells,
};

fn config_map_cells(obj: &Value, now: DateTime<Utc>) -> Vec<Value> {
    vec![
        name_cell(obj),
        json!(map_len(&obj["data"]) + map_len(&obj["binaryData"])),
        age_cell(obj, now),
    ]
}

pub static SECRET: Printer = Printer {
    columns: &[
        ("Name", "string", 0, NAME_DOC),
        (
            "Type",
            "string",
            0,
            "Used to facilitate programmatic handling of secret data.",
        ),
        ("Data", "string", 0, "Data contains the secret data."),
        ("Age", "string", 0, AGE_DOC),
    ],
    cells: secret_cells,
};

fn secret_cells(obj: &Value, now: DateTime<Utc>) -> Vec<Value> {
    vec![
        name_cell(obj),
        json!(str_at(obj, &["type"])),
        json!(map_len(&obj["data"])),
        age_cell(obj, now),
    ]
}

pub static SERVICE_ACCOUNT: Printer = Printer {
    columns: &[
        ("Name", "string", 0, NAME_DOC),
        ("Secrets", "string", 0, "Secrets is a list of the secrets in the same namespace that pods running using this ServiceAccount are allowed to use."),
        ("Age", "string", 0, AGE_DOC),
    ],
    cells: service_account_cells,
};

fn service_account_cells(obj: &Value, now: DateTime<Utc>) -> Vec<Value> {
    vec![
        name_cell(obj),
        json!(obj["secrets"].as_array().map_or(0, Vec::len)),
        age_cell(obj, now),
    ]
}

pub static LEASE: Printer = Printer {
    columns: &[
        ("Name", "string", 0, NAME_DOC),
        (
            "Holder",
            "string",
            0,
            "holderIdentity contains the identity of the holder of a current lease.",
        ),
        ("Age", "string", 0, AGE_DOC),
    ],
    cells: lease_cells,
};

fn lease_cells(obj: &Value, now: DateTime<Utc>) -> Vec<Value> {
    vec![
        name_cell(obj),
        json!(str_at(obj, &["spec", "holderIdentity"])),
        age_cell(obj, now),
    ]
}

pub static POD_DISRUPTION_BUDGET: Printer = Printer {
    columns: &[
        ("Name", "string", 0, NAME_DOC),
        (
            "Min Available",
            "string",
            0,
            "The minimum number of pods that must be available.",
        ),
        (
            "Max Unavailable",
            "string",
            0,
            "The maximum number of pods that may be unavailable.",
        ),
        (
            "Allowed Disruptions",
            "integer",
            0,
            "Calculated number of pods that may be disrupted at this time.",
        ),
        ("Age", "string", 0, AGE_DOC),
    ],
    cells: pod_disruption_budget_cells,
};

fn pod_disruption_budget_cells(obj: &Value, now: DateTime<Utc>) -> Vec<Value> {
    let bound = |f: &str| match &obj["spec"][f] {
        Value::Null => "N/A".to_string(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    vec![
        name_cell(obj),
        json!(bound("minAvailable")),
        json!(bound("maxUnavailable")),
        json!(int_at(obj, &["status", "disruptionsAllowed"])),
        age_cell(obj, now),
    ]
}

// Upstream takes these from the API's own field documentation.
const NAME_DOC: &str = "Name must be unique within a namespace. It is required when creating resources, although some resources may allow a client to request the generation of an appropriate name automatically. Name is primarily intended for creation idempotence and configuration definition. Cannot be updated. More info: https://kubernetes.io/docs/concepts/overview/working-with-objects/names#names";
const AGE_DOC: &str = "CreationTimestamp is a timestamp representing the server time when this object was created. It is not guaranteed to be set in happens-before order across separate operations. Clients may not set this value. It is represented in RFC3339 form and is in UTC.\n\nPopulated by the system. Read-only. Null for lists. More info: https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#metadata";
const CONTAINERS_DOC: &str = "Names of each container in the template.";
const IMAGES_DOC: &str = "Images referenced by each container in the template.";
const SELECTOR_DOC: &str = "Label selector for pods. Existing ReplicaSets whose pods are selected by this will be the ones affected by this deployment.";

#[cfg(test)]
mod tests;
