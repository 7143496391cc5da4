//! containerd's content store: reading blobs, writing them (streamed, digest-checked by
//! containerd on commit) and labelling them for the garbage collector.

use std::collections::HashMap;
use std::path::PathBuf;
use std::pin::Pin;

use bytes::Bytes;
use containerd_client::services::v1::content_client::ContentClient;
use containerd_client::services::v1::{
    Info, InfoRequest, ReadContentRequest, UpdateRequest, WriteAction, WriteContentRequest,
};
use futures::{Stream, StreamExt};
use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;
use tonic::Code;

use super::{status_error, Connection};
use crate::{Result, RuntimeError};

/// gRPC messages are limited to 4 MiB by default; stay well below.
const CHUNK: usize = 1 << 20;

pub(crate) type ByteStream = Pin<Box<dyn Stream<Item = Result<Bytes>> + Send>>;

/// Where a blob's bytes come from.
pub(crate) enum BlobSource {
    Bytes(Bytes),
    File(PathBuf),
    Stream(ByteStream),
}

impl Connection {
    fn content(&self) -> ContentClient<containerd_client::tonic::transport::Channel> {
        ContentClient::new(self.channel()).max_decoding_message_size(64 << 20)
    }

    pub(crate) async fn read_content(&self, digest: &str) -> Result<Bytes> {
        let mut stream = self
            .content()
            .read(self.request(ReadContentRequest {
                digest: digest.to_string(),
                offset: 0,
                size: 0,
            }))
            .await
            .map_err(|s| status_error(s, &format!("content {digest}")))?
            .into_inner();
        let mut data = Vec::new();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|s| status_error(s, &format!("content {digest}")))?;
            data.extend_from_slice(&chunk.data);
        }
        Ok(Bytes::from(data))
    }

    pub(crate) async fn content_info(&self, digest: &str) -> Result<Option<Info>> {
        match self
            .content()
            .info(self.request(InfoRequest {
                digest: digest.to_string(),
            }))
            .await
        {
            Ok(response) => Ok(response.into_inner().info),
            Err(status) if status.code() == Code::NotFound => Ok(None),
            Err(status) => Err(status_error(status, &format!("content {digest}"))),
        }
    }

    /// Sets (adds or replaces) the given labels on a stored blob.
    pub(crate) async fn label_content(
        &self,
        digest: &str,
        labels: HashMap<String, String>,
    ) -> Result<()> {
        if labels.is_empty() {
            return Ok(());
        }
        let paths = labels.keys().map(|key| format!("labels.{key}")).collect();
        self.content()
            .update(self.request(UpdateRequest {
                info: Some(Info {
                    digest: digest.to_string(),
                    labels,
                    ..Info::default()
                }),
                update_mask: Some(prost_types::FieldMask { paths }),
            }))
            .await
            .map_err(|s| status_error(s, &format!("content {digest}")))?;
        Ok(())
    }

    /// Stores a blob unless present (then only its labels are set). containerd checks the
    /// digest and size on commit, so a corrupt download never lands.
    pub(crate) async fn ensure_content(
        &self,
        lease: &str,
        digest: &str,
        size: i64,
        labels: HashMap<String, String>,
        source: BlobSource,
    ) -> Result<()> {
        if self.content_info(digest).await?.is_some() {
            return self.label_content(digest, labels).await;
        }
        let reference = format!(
            "rkube-write-{digest}-{}",
            chrono::Utc::now().timestamp_nanos_opt().unwrap_or_default()
        );
        let (sender, receiver) = mpsc::channel::<WriteContentRequest>(4);
        let producer = {
            let reference = reference.clone();
            let digest = digest.to_string();
            tokio::spawn(async move {
                produce_writes(sender, source, reference, digest, size, labels).await
            })
        };
        let result = self
            .content()
            .write(self.leased(tokio_stream::wrappers::ReceiverStream::new(receiver), lease))
            .await;
        let outcome = match result {
            Ok(response) => {
                let mut responses = response.into_inner();
                let mut committed = false;
                let mut failure = None;
                while let Some(message) = responses.next().await {
                    match message {
                        Ok(message) if message.action == WriteAction::Commit as i32 => {
                            committed = true;
                            break;
                        }
                        Ok(_) => {}
                        Err(status) => {
                            failure = Some(status);
                            break;
                        }
                    }
                }
                match failure {
                    Some(status) if status.code() == Code::AlreadyExists => Ok(()),
                    Some(status) => Err(status_error(status, &format!("writing {digest}"))),
                    None if committed => Ok(()),
                    None => Err(RuntimeError::Other(format!(
                        "writing {digest}: stream ended before commit"
                    ))),
                }
            }
            Err(status) if status.code() == Code::AlreadyExists => Ok(()),
            Err(status) => Err(status_error(status, &format!("writing {digest}"))),
        };
        // The producer's own error (a failed download) explains more than containerd's.
        match producer.await {
            Ok(Err(error)) => Err(error),
            Ok(Ok(())) => outcome,
            Err(join) => Err(RuntimeError::Other(format!("content writer task: {join}"))),
        }
    }
}

async fn produce_writes(
    sender: mpsc::Sender<WriteContentRequest>,
    source: BlobSource,
    reference: String,
    digest: String,
    size: i64,
    labels: HashMap<String, String>,
) -> Result<()> {
    let mut offset: i64 = 0;
    let write = |offset: i64, data: Vec<u8>| WriteContentRequest {
        action: WriteAction::Write as i32,
        r#ref: reference.clone(),
        total: size,
        expected: digest.clone(),
        offset,
        data,
        labels: HashMap::new(),
    };
    // A closed channel means containerd ended the call; its status is reported by the caller.
    macro_rules! send {
        ($message:expr) => {
            if sender.send($message).await.is_err() {
                return Ok(());
            }
        };
    }
    match source {
        BlobSource::Bytes(bytes) => {
            for chunk in bytes.chunks(CHUNK) {
                send!(write(offset, chunk.to_vec()));
                offset += chunk.len() as i64;
            }
        }
        BlobSource::File(path) => {
            let mut file = tokio::fs::File::open(&path).await?;
            let mut buffer = vec![0u8; CHUNK];
            loop {
                let read = file.read(&mut buffer).await?;
                if read == 0 {
                    break;
                }
                send!(write(offset, buffer[..read].to_vec()));
                offset += read as i64;
            }
        }
        BlobSource::Stream(mut stream) => {
            let mut pending: Vec<u8> = Vec::with_capacity(CHUNK);
            while let Some(chunk) = stream.next().await {
                pending.extend_from_slice(&chunk?);
                if pending.len() >= CHUNK {
                    let data = std::mem::replace(&mut pending, Vec::with_capacity(CHUNK));
                    let len = data.len() as i64;
                    send!(write(offset, data));
                    offset += len;
                }
            }
            if !pending.is_empty() {
                let len = pending.len() as i64;
                send!(write(offset, pending));
                offset += len;
            }
        }
    }
    if offset != size {
        return Err(RuntimeError::InvalidImage(format!(
            "blob {digest}: got {offset} bytes, expected {size}"
        )));
    }
    send!(WriteContentRequest {
        action: WriteAction::Commit as i32,
        r#ref: reference.clone(),
        total: size,
        expected: digest.clone(),
        offset,
        data: Vec::new(),
        labels,
    });
    Ok(())
}
