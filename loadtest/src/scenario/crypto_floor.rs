//! The crypto floor of a TLS leg: what the gateway cannot avoid spending
//! per GiB on a TLS leg, whatever its design — one AEAD pass over the
//! bytes (seal towards a TLS browser, open from a TLS connector) with the
//! cipher suite the gateway actually negotiated, timed in this process on
//! the gateway's own CPU through rustls's record encrypter and decrypter
//! (the code the gateway runs), in full 16 KiB records. A leg's floor is
//! the plaintext run's CPU per GiB plus its passes.

use std::time::Instant;

use anyhow::{bail, Context, Result};
use rustls::crypto::cipher::{
    AeadKey, InboundOpaqueMessage, Iv, OutboundChunks, OutboundPlainMessage,
};
use rustls::{ContentType, ProtocolVersion, SupportedCipherSuite};

use super::pin_current;

/// The key length rustls's `AeadKey::from` builds (its `MAX_LEN`).
const KEY_LEN: usize = 32;

/// TLS's largest record payload: what a bulk stream is cut into.
const RECORD: usize = 16 * 1024;

/// One suite's passes, CPU-seconds per GiB of payload.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Floor {
    pub suite: String,
    pub seal_s_per_gib: f64,
    pub open_s_per_gib: f64,
}

/// Times `bytes` of seals and of opens with `suite`, on `cpu`.
pub fn measure(suite: SupportedCipherSuite, cpu: Option<usize>, bytes: usize) -> Result<Floor> {
    let SupportedCipherSuite::Tls13(s) = suite else {
        bail!(
            "the gateway negotiated TLS 1.2 ({suite:?}): the floor is measured for TLS 1.3 suites"
        );
    };
    if s.aead_alg.key_len() != KEY_LEN {
        bail!("{suite:?}: only 256-bit keys are measured (rustls builds shorter keys internally)");
    }
    let name = format!("{:?}", suite.suite());
    let aead = s.aead_alg;
    std::thread::spawn(move || -> Result<Floor> {
        pin_current(cpu);
        let key = || AeadKey::from([7u8; KEY_LEN]);
        let iv = || Iv::new([9u8; 12]);
        let records = (bytes / RECORD).max(64) as u64;
        let gib = (records as usize * RECORD) as f64 / (1u64 << 30) as f64;
        let plain = vec![0xabu8; RECORD];
        let mut enc = aead.encrypter(key(), iv());
        let mut record = |seq| {
            let msg = OutboundPlainMessage {
                typ: ContentType::ApplicationData,
                version: ProtocolVersion::TLSv1_2,
                payload: OutboundChunks::Single(&plain),
            };
            enc.encrypt(msg, seq)
        };
        let t = Instant::now();
        let mut sealed = None;
        for seq in 0..records {
            sealed = Some(record(seq).context("seal")?);
        }
        let seal = t.elapsed().as_secs_f64();
        // Opening decrypts in place: each record is first copied back
        // (as the kernel's read would have put it), a copy timed apart
        // and taken off.
        let wire = sealed.context("no record")?.encode();
        let mut dec = aead.decrypter(key(), iv());
        let body = &wire[5..];
        let mut work = vec![0u8; body.len()];
        let t = Instant::now();
        for _ in 0..records {
            work.copy_from_slice(body);
            let m = InboundOpaqueMessage::new(
                ContentType::ApplicationData,
                ProtocolVersion::TLSv1_2,
                &mut work,
            );
            dec.decrypt(m, records - 1).context("open")?;
        }
        let open_and_copy = t.elapsed().as_secs_f64();
        let t = Instant::now();
        for _ in 0..records {
            work.copy_from_slice(std::hint::black_box(body));
            std::hint::black_box(&work);
        }
        let copy = t.elapsed().as_secs_f64();
        Ok(Floor {
            suite: name,
            seal_s_per_gib: seal / gib,
            open_s_per_gib: (open_and_copy - copy).max(0.0) / gib,
        })
    })
    .join()
    .map_err(|_| anyhow::anyhow!("the crypto floor's thread panicked"))?
}
