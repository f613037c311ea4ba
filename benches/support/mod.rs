//! Helpers shared by the benchmark binaries.

/// Pins the calling thread to `cpu` (modulo the CPUs there are); a no-op on
/// a single-CPU host, where there is nothing to separate.
pub fn pin(cpu: usize) {
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    if cpus > 1 {
        let _ = monoio::utils::bind_to_cpu_set([cpu % cpus]);
    }
}
