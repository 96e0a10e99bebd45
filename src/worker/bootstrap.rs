//! The named bootstrap OCaml's capnp-rpc (and C++'s `EzRpcClient::importCap`) sends: the
//! first message is `Bootstrap { questionId, deprecatedObjectId = Text(service id) }`.
//! capnp-rpc 0.27 only sets `questionId`, so [`NamedBootstrap`] wraps its two-party
//! `VatNetwork`, and the one connection it hands out (from `connect` and `accept` alike),
//! and fills in the object id as the Bootstrap message goes out. Everything else passes
//! through untouched.

use std::rc::Rc;

use capnp::capability::Promise;
use capnp::message::{Builder, HeapAllocator};
use capnp::Error;
use capnp_rpc::rpc_capnp::message;
use capnp_rpc::rpc_twoparty_capnp::Side;
use capnp_rpc::{Connection, IncomingMessage, OutgoingMessage, VatNetwork};

/// A [`VatNetwork`] that names the service it bootstraps.
pub struct NamedBootstrap<N> {
    inner: N,
    service_id: Rc<[u8]>,
}

impl<N: VatNetwork<Side>> NamedBootstrap<N> {
    pub fn new(inner: N, service_id: &[u8]) -> NamedBootstrap<N> {
        NamedBootstrap {
            inner,
            service_id: Rc::from(service_id),
        }
    }
}

impl<N: VatNetwork<Side>> VatNetwork<Side> for NamedBootstrap<N> {
    fn connect(&mut self, host_id: Side) -> Option<Box<dyn Connection<Side>>> {
        let service_id = self.service_id.clone();
        self.inner
            .connect(host_id)
            .map(|inner| Box::new(NamedConnection { inner, service_id }) as Box<dyn Connection<Side>>)
    }

    fn accept(&mut self) -> Promise<Box<dyn Connection<Side>>, Error> {
        let service_id = self.service_id.clone();
        let accepted = self.inner.accept();
        Promise::from_future(async move {
            let inner = accepted.await?;
            Ok(Box::new(NamedConnection { inner, service_id }) as Box<dyn Connection<Side>>)
        })
    }

    fn drive_until_shutdown(&mut self) -> Promise<(), Error> {
        self.inner.drive_until_shutdown()
    }
}

struct NamedConnection {
    inner: Box<dyn Connection<Side>>,
    service_id: Rc<[u8]>,
}

/// Words the service id takes as Text (bytes and the NUL, rounded up).
fn text_words(len: usize) -> u32 {
    u32::try_from(len.div_ceil(8) + usize::from(len.is_multiple_of(8))).unwrap_or(u32::MAX)
}

impl Connection<Side> for NamedConnection {
    fn get_peer_vat_id(&self) -> Side {
        self.inner.get_peer_vat_id()
    }

    fn new_outgoing_message(&mut self, first_segment_word_size: u32) -> Box<dyn OutgoingMessage> {
        // Room for the id in the first segment, so the Bootstrap message stays one segment
        // (as C++ sends it); unused room never goes on the wire.
        let hint = match first_segment_word_size {
            0 => 0,
            n => n.saturating_add(text_words(self.service_id.len())),
        };
        Box::new(NamedMessage {
            inner: self.inner.new_outgoing_message(hint),
            service_id: self.service_id.clone(),
        })
    }

    fn receive_incoming_message(&mut self) -> Promise<Option<Box<dyn IncomingMessage>>, Error> {
        self.inner.receive_incoming_message()
    }

    fn new_stream(&mut self) -> (Box<dyn capnp_rpc::FlowController>, Promise<(), Error>) {
        self.inner.new_stream()
    }

    fn shutdown(&mut self, result: capnp::Result<()>) -> Promise<(), Error> {
        self.inner.shutdown(result)
    }
}

struct NamedMessage {
    inner: Box<dyn OutgoingMessage>,
    service_id: Rc<[u8]>,
}

impl NamedMessage {
    /// Names the service if this is a Bootstrap message.
    fn name_bootstrap(&mut self) -> capnp::Result<()> {
        let body = self.inner.get_body()?;
        let msg: message::Builder<'_> = body.get_as()?;
        if let Ok(message::Bootstrap(bootstrap)) = msg.which() {
            let mut bootstrap = bootstrap?;
            if !self.service_id.is_empty() {
                let id = capnp::text::Reader::from(&self.service_id[..]);
                bootstrap.reborrow().get_deprecated_object_id().set_as(id)?;
            }
        }
        Ok(())
    }
}

impl OutgoingMessage for NamedMessage {
    fn get_body(&mut self) -> capnp::Result<capnp::any_pointer::Builder<'_>> {
        self.inner.get_body()
    }

    fn get_body_as_reader(&self) -> capnp::Result<capnp::any_pointer::Reader<'_>> {
        self.inner.get_body_as_reader()
    }

    fn send(mut self: Box<Self>) -> (Promise<(), Error>, Rc<Builder<HeapAllocator>>) {
        if let Err(e) = self.name_bootstrap() {
            tracing::warn!("naming the bootstrap service: {e}");
        }
        self.inner.send()
    }

    fn take(self: Box<Self>) -> Builder<HeapAllocator> {
        self.inner.take()
    }

    fn size_in_words(&self) -> usize {
        self.inner.size_in_words()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_words_counts_the_nul() {
        assert_eq!(text_words(0), 1);
        assert_eq!(text_words(4), 1);
        assert_eq!(text_words(7), 1);
        assert_eq!(text_words(8), 2);
        assert_eq!(text_words(32), 5);
    }

    /// The first frame for the id `61 00 62 ff`, as C++'s `EzRpcClient::importCap` sends it:
    /// segment table [1 segment, 6 words], root pointer to Message (1 data word, 1 pointer),
    /// tag 8 (bootstrap) → Bootstrap (1, 1) with questionId 0 → a 5-byte list (4 + NUL).
    pub(crate) const GOLDEN: [u8; 56] = [
        0x00, 0x00, 0x00, 0x00, 0x06, 0x00, 0x00, 0x00, // segment count - 1, segment 0 words
        0x00, 0x00, 0x00, 0x00, 0x01, 0x00, 0x01, 0x00, // root: struct, offset 0, 1 data, 1 ptr
        0x08, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // Message: which = bootstrap (8)
        0x00, 0x00, 0x00, 0x00, 0x01, 0x00, 0x01, 0x00, // -> Bootstrap struct, 1 data, 1 ptr
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // questionId 0
        0x01, 0x00, 0x00, 0x00, 0x2a, 0x00, 0x00, 0x00, // deprecatedObjectId: byte list, 5
        0x61, 0x00, 0x62, 0xff, 0x00, 0x00, 0x00, 0x00, // "a\0b\xff" NUL, padding
    ];

    #[test]
    fn first_frame_is_the_named_bootstrap() {
        use futures::AsyncReadExt as _;
        let (client, server) = tokio::io::duplex(4096);
        let (read, write) = tokio::io::split(client);
        use tokio_util::compat::{TokioAsyncReadCompatExt as _, TokioAsyncWriteCompatExt as _};
        let network =
            capnp_rpc::twoparty::VatNetwork::new(read.compat(), write.compat_write(), Side::Client, Default::default());
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let local = tokio::task::LocalSet::new();
        let frame = local.block_on(&rt, async move {
            let mut rpc =
                capnp_rpc::RpcSystem::new(Box::new(NamedBootstrap::new(network, &[0x61, 0x00, 0x62, 0xff])), None);
            let _cap: capnp::capability::Client = rpc.bootstrap(Side::Server);
            tokio::task::spawn_local(rpc);
            let mut server = server.compat();
            let mut frame = [0u8; 56];
            server.read_exact(&mut frame).await.unwrap();
            frame
        });
        assert_eq!(frame, GOLDEN);
    }
}
