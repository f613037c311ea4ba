//! Record batches to binary messages: an Arrow IPC stream cut at message
//! boundaries into messages of about `chunk` bytes, so a browser can decode
//! each one as it arrives and their concatenation is one valid IPC stream.

use arrow_array::RecordBatch;
use arrow_ipc::writer::{IpcWriteOptions, StreamWriter};
use arrow_ipc::CompressionType;
use arrow_schema::{ArrowError, Schema};

use crate::config::Compression;

pub struct IpcFramer {
    writer: StreamWriter<Vec<u8>>,
    chunk: usize,
    /// Whole IPC messages waiting to fill a binary message.
    pending: Vec<u8>,
    /// Payload bytes handed out so far.
    pub total: u64,
    pub rows: u64,
}

fn options(c: Compression) -> Result<IpcWriteOptions, ArrowError> {
    let kind = match c {
        Compression::None => None,
        Compression::Lz4 => Some(CompressionType::LZ4_FRAME),
        Compression::Zstd => Some(CompressionType::ZSTD),
    };
    IpcWriteOptions::default().try_with_compression(kind)
}

/// The schema as one IPC message (what `stream_start` and
/// `get_flight_info` carry, base64-encoded).
pub fn schema_message(schema: &Schema) -> Result<Vec<u8>, ArrowError> {
    let w = StreamWriter::try_new(Vec::new(), schema)?;
    w.into_inner()
}

impl IpcFramer {
    pub fn new(
        schema: &Schema,
        compression: Compression,
        chunk: usize,
    ) -> Result<Self, ArrowError> {
        let mut writer =
            StreamWriter::try_new_with_options(Vec::new(), schema, options(compression)?)?;
        let pending = std::mem::take(writer.get_mut());
        Ok(IpcFramer {
            writer,
            chunk,
            pending,
            total: 0,
            rows: 0,
        })
    }

    /// Encodes a batch (sliced by rows when it would not fit a message);
    /// returns the binary messages that are now complete.
    pub fn push(&mut self, batch: &RecordBatch) -> Result<Vec<Vec<u8>>, ArrowError> {
        let mut out = Vec::new();
        let rows = batch.num_rows();
        if rows == 0 {
            return Ok(out);
        }
        // Aim at three quarters of a message per slice: the estimate counts
        // buffer capacity, the encoding adds headers and padding.
        let budget = self.chunk * 3 / 4;
        let size = batch.get_array_memory_size().max(1);
        let per = if size > budget {
            (rows * budget / size).max(1)
        } else {
            rows
        };
        let mut at = 0;
        while at < rows {
            let n = per.min(rows - at);
            self.writer.write(&batch.slice(at, n))?;
            at += n;
            self.rows += n as u64;
            let blob = std::mem::take(self.writer.get_mut());
            self.add(blob, &mut out);
        }
        Ok(out)
    }

    fn add(&mut self, blob: Vec<u8>, out: &mut Vec<Vec<u8>>) {
        if !self.pending.is_empty() && self.pending.len() + blob.len() > self.chunk {
            self.emit(out);
        }
        self.pending.extend_from_slice(&blob);
        if self.pending.len() >= self.chunk {
            self.emit(out);
        }
    }

    fn emit(&mut self, out: &mut Vec<Vec<u8>>) {
        let m = std::mem::take(&mut self.pending);
        self.total += m.len() as u64;
        out.push(m);
    }

    /// Sends what is pending now (live feeds: latency over message size).
    pub fn flush(&mut self) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        if !self.pending.is_empty() {
            self.emit(&mut out);
        }
        out
    }

    /// Ends the stream (end-of-stream marker); returns the last messages.
    pub fn finish(mut self) -> Result<Vec<Vec<u8>>, ArrowError> {
        self.writer.finish()?;
        let blob = std::mem::take(self.writer.get_mut());
        let mut out = Vec::new();
        self.pending.extend_from_slice(&blob);
        if !self.pending.is_empty() {
            self.emit(&mut out);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow_array::{Int64Array, StringArray};
    use arrow_ipc::reader::StreamReader;
    use arrow_schema::{DataType, Field};

    use super::*;

    fn batch(rows: usize) -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("name", DataType::Utf8, false),
        ]));
        RecordBatch::try_new(
            schema,
            vec![
                Arc::new(Int64Array::from_iter_values(0..rows as i64)),
                Arc::new(StringArray::from_iter_values(
                    (0..rows).map(|i| format!("row-{i:08}")),
                )),
            ],
        )
        .unwrap()
    }

    fn roundtrip(c: Compression) {
        let b = batch(200_000);
        let chunk = 64 * 1024;
        let mut f = IpcFramer::new(&b.schema(), c, chunk).unwrap();
        let mut msgs = f.push(&b).unwrap();
        msgs.extend(f.push(&batch(10)).unwrap());
        msgs.extend(f.finish().unwrap());
        assert!(msgs.len() > 10, "a big batch is cut into many messages");
        for m in &msgs[..msgs.len() - 1] {
            assert!(m.len() <= chunk * 5 / 4, "message of {} bytes", m.len());
        }
        // Every message prefix of whole messages decodes; all of them make one stream.
        let all: Vec<u8> = msgs.concat();
        let rows: usize = StreamReader::try_new(&all[..], None)
            .unwrap()
            .map(|b| b.unwrap().num_rows())
            .sum();
        assert_eq!(rows, 200_010);
        let first_two: Vec<u8> = msgs[..2].concat();
        let partial: usize = StreamReader::try_new(&first_two[..], None)
            .unwrap()
            .map_while(Result::ok)
            .map(|b| b.num_rows())
            .sum();
        assert!(partial > 0, "the first messages decode on their own");
    }

    #[test]
    fn batches_are_cut_into_whole_messages_of_about_a_chunk() {
        roundtrip(Compression::None);
    }

    #[test]
    fn compressed_streams_decode() {
        roundtrip(Compression::Lz4);
        roundtrip(Compression::Zstd);
    }
}
