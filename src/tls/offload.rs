//! Kernel TLS (kTLS): where the kernel offers it, a socket past its
//! handshake could be given the session's keys and forwarded by the shards
//! like any plaintext one, with the crypto done in the kernel (or the NIC).
//! Sluice does not use it yet; it detects it at start and says in the log
//! which path TLS takes, so an operator knows, and nothing ever requires it.

/// Whether the running kernel has the `tls` upper-layer protocol
/// (`CONFIG_TLS`): listed in `tcp_available_ulp` once the module is loaded.
pub fn kernel_tls_available() -> bool {
    std::fs::read_to_string("/proc/sys/net/ipv4/tcp_available_ulp")
        .map(|s| s.split_whitespace().any(|u| u == "tls"))
        .unwrap_or(false)
}

/// Logs, once at start, how TLS is terminated on this host.
pub fn log_path(listener: &str) {
    let ktls = kernel_tls_available();
    tracing::info!(
        listener,
        kernel_tls_available = ktls,
        "TLS terminated by rustls on the front's threads{}",
        if ktls {
            " (this kernel offers kTLS; Sluice does not use it yet)"
        } else {
            " (no kTLS in this kernel: CONFIG_TLS not set or the tls module not loaded)"
        }
    );
}

#[cfg(test)]
mod tests {
    /// The answer matches what the kernel lists, whichever it is here.
    #[test]
    fn detection_reads_the_kernels_list() {
        let listed = std::fs::read_to_string("/proc/sys/net/ipv4/tcp_available_ulp")
            .unwrap_or_default()
            .contains("tls");
        assert_eq!(super::kernel_tls_available(), listed);
    }
}
