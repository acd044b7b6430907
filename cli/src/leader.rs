//! Leader election for `weir controllers`: one `coordination.k8s.io` Lease per controller, as
//! Flux's controllers hold one each, so two replicas never reconcile the same objects.
//!
//! The Leases are taken with kube-lease-manager (server-side apply on the Lease, expiry and
//! renewal with a grace period for clock skew) rather than a loop of our own: it is the kept
//! crate for kube-rs, on the same kube and k8s-openapi versions.
//!
//! A process takes its controllers' Leases one by one in a fixed order, so two replicas
//! running the same controllers never deadlock holding one each. A replica that has not taken
//! them all waits as a standby (healthy and ready, so a rolling update can start it while the
//! old leader still runs). A leader that loses a Lease exits at once (its controllers may no
//! longer write), and Kubernetes starts it again as a standby; on SIGTERM it releases its
//! Leases after its controllers stopped, so a standby takes over without waiting for expiry.

use std::time::Duration;

use kube::Client;
use kube_lease_manager::{LeaseManager, LeaseManagerBuilder};
use tokio::{sync::watch, task::JoinHandle};

/// The Leases' timing, from Flux's flags.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    /// How long a Lease is valid after its last renewal (`--leader-election-lease-duration`).
    pub lease_duration: Duration,
    /// How long before expiry a leader renews it (`--leader-election-renew-deadline`: the
    /// leader renews within this long of its last renewal).
    pub renew_deadline: Duration,
    /// How often a standby looks at a Lease held by another (`--leader-election-retry-period`):
    /// a Lease released by its leader is taken within this long.
    pub retry_period: Duration,
}

impl Timing {
    /// The lease duration and grace period in whole seconds, as the Lease records them;
    /// refused unless `0 < renew deadline < lease duration`.
    fn seconds(self) -> Result<(u64, u64), String> {
        let duration = self.lease_duration.as_secs();
        let deadline = self.renew_deadline.as_secs();
        if deadline == 0 || deadline >= duration {
            return Err(format!(
                "--leader-election-renew-deadline ({deadline}s) must be at least 1s and shorter \
                 than --leader-election-lease-duration ({duration}s)"
            ));
        }
        Ok((duration, duration - deadline))
    }
}

/// The Leases this process holds.
#[derive(Debug)]
pub struct Leadership {
    held: Vec<(
        String,
        watch::Receiver<bool>,
        JoinHandle<kube_lease_manager::Result<LeaseManager>>,
    )>,
}

/// This replica's identity in the Leases: the pod's name (`POD_NAME`, else the host name) and
/// a random suffix, as controller-runtime names its leaders.
#[must_use]
pub fn identity() -> String {
    let host = std::env::var("POD_NAME")
        .ok()
        .filter(|n| !n.is_empty())
        .or_else(|| {
            std::fs::read_to_string("/etc/hostname")
                .ok()
                .map(|h| h.trim().to_owned())
        })
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| "weir".to_owned());
    format!("{host}_{:016x}", rand::random::<u64>())
}

/// The namespace of the Leases: the flag, else the pod's (`POD_NAMESPACE`, then the service
/// account's namespace file), else the kubeconfig's.
#[must_use]
pub fn namespace(flag: Option<&str>, kubeconfig_default: &str) -> String {
    flag.map(str::to_owned)
        .or_else(|| {
            std::env::var("POD_NAMESPACE")
                .ok()
                .filter(|n| !n.is_empty())
        })
        .or_else(|| {
            std::fs::read_to_string("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
                .ok()
                .map(|n| n.trim().to_owned())
                .filter(|n| !n.is_empty())
        })
        .unwrap_or_else(|| kubeconfig_default.to_owned())
}

/// Takes the Lease `weir-<name>-leader-election` for each of `names` (sorted, so every replica
/// asks in the same order), waiting as long as another replica holds one.
pub async fn acquire(
    client: &Client,
    namespace: &str,
    identity: &str,
    names: &[&str],
    timing: Timing,
) -> Result<Leadership, String> {
    let (duration, grace) = timing.seconds()?;
    let mut names = names.to_vec();
    names.sort_unstable();
    names.dedup();
    let mut held = vec![];
    for name in names {
        let lease = format!("weir-{name}-leader-election");
        let builder = || {
            LeaseManagerBuilder::new(client.clone(), &lease)
                .with_namespace(namespace)
                .with_identity(identity)
                .with_duration(duration)
                .with_grace(grace)
                .with_field_manager(format!("weir-{name}"))
        };
        let manager = take(builder, &lease, namespace, identity, timing.retry_period).await;
        tracing::info!(lease, namespace, identity, "leading");
        // From now on the crate's task renews the Lease and reports its loss.
        let (leading, task) = manager.watch().await;
        held.push((lease, leading, task));
    }
    Ok(Leadership { held })
}

/// Takes the Lease, looking again every `retry` while another holds it. The crate's own loop
/// would sleep until the holder's Lease expires, so a Lease its leader released on shutdown
/// would wait out its whole duration: each look here starts from the Lease as the API server
/// has it (a new manager reads it), as client-go's elector retries every retry period.
async fn take(
    builder: impl Fn() -> LeaseManagerBuilder,
    lease: &str,
    namespace: &str,
    identity: &str,
    retry: Duration,
) -> LeaseManager {
    let mut announced = false;
    loop {
        match builder().build().await {
            Ok(manager) => match tokio::time::timeout(retry, manager.changed()).await {
                Ok(Ok(true)) => return manager,
                // Held by another (the crate sleeps until it expires), or not yet taken.
                Ok(Ok(false)) | Err(_) => {
                    if !announced {
                        tracing::info!(lease, namespace, identity, "waiting for leadership");
                        announced = true;
                    }
                    continue;
                }
                Ok(Err(error)) => {
                    tracing::warn!(lease, namespace, %error, "cannot take the Lease");
                }
            },
            Err(error) => tracing::warn!(lease, namespace, %error, "cannot read the Lease"),
        }
        tokio::time::sleep(retry).await;
    }
}

impl Leadership {
    /// Resolves when a Lease is lost (another replica took it, or it could not be renewed in
    /// time): the caller must stop writing at once.
    pub async fn lost(&mut self) -> String {
        if self.held.is_empty() {
            return std::future::pending().await;
        }
        let watches = self.held.iter_mut().map(|(lease, leading, _)| {
            Box::pin(async move {
                // A closed channel (the renewing task ended) is a loss too.
                let _ = leading.wait_for(|leading| !*leading).await;
                lease.clone()
            })
        });
        futures::future::select_all(watches).await.0
    }

    /// Gives the Leases up, so a standby takes over at once.
    pub async fn release(self) {
        for (lease, leading, task) in self.held {
            // Closing the channel makes the renewing task release the Lease and end.
            drop(leading);
            match task.await {
                Ok(Ok(_)) => tracing::info!(lease, "leadership released"),
                Ok(Err(error)) => tracing::warn!(lease, %error, "cannot release the Lease"),
                Err(error) => tracing::warn!(lease, %error, "the Lease's task failed"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_renew_deadline_must_be_shorter_than_the_lease() {
        let timing = |lease, renew| Timing {
            lease_duration: Duration::from_secs(lease),
            renew_deadline: Duration::from_secs(renew),
            retry_period: Duration::from_secs(5),
        };
        assert_eq!(timing(35, 30).seconds(), Ok((35, 5)));
        assert!(timing(30, 30).seconds().is_err());
        assert!(timing(30, 0).seconds().is_err());
    }
}
