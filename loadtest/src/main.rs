//! Placeholder: the full load generator is tracked by its own issue.
//! The bulk/latency benchmark for the gateway lives in `benches/` meanwhile.
fn main() {
    eprintln!(
        "sluice-loadtest: not built yet; see benches/forward_bench.rs for the gateway benchmark"
    );
    std::process::exit(2);
}
