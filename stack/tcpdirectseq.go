package stack

// The sequence-number and window arithmetic of the direct TCP path
// (tcpdirect.go), kept apart from sockets and frames so that it can be
// tested on its own.

// seqLT reports a < b in TCP sequence space (RFC 793, modulo 2^32).
func seqLT(a, b uint32) bool { return int32(a-b) < 0 }

// seqLE reports a <= b in TCP sequence space.
func seqLE(a, b uint32) bool { return int32(a-b) <= 0 }

// trimData decides what to do with a guest segment of n bytes (FIN not
// counted) starting at seq when the next byte expected is rcvNxt: skip
// bytes already taken and write the rest, or, for a segment that starts
// beyond rcvNxt or holds nothing new (a keep-alive probe, a duplicate),
// answer with an ACK and drop it (ok false).
func trimData(seq, rcvNxt uint32, n int) (skip int, ok bool) {
	if seq == rcvNxt {
		return 0, true
	}
	if seqLT(seq, rcvNxt) && seqLT(rcvNxt, seq+uint32(n)) {
		return int(rcvNxt - seq), true
	}
	return 0, false
}

// ackedBytes is what an ACK for ack acknowledges of the data in flight
// [una, max) to the guest, FIN excluded: fin is whether a FIN was sent at
// end (the sequence number after the host's last byte). ok is false for
// an ACK that acknowledges nothing new or something never sent.
func ackedBytes(ack, una, max uint32, fin bool, end uint32) (n uint32, ok bool) {
	if !seqLT(una, ack) || seqLT(max, ack) {
		return 0, false
	}
	n = ack - una
	if fin && ack == end+1 {
		n-- // the FIN's sequence number is no byte in the socket
	}
	return n, true
}

// windowField is the 16-bit window field for a receive window of wnd
// bytes advertised with shift ws.
func windowField(wnd uint32, ws uint8) uint16 {
	return uint16(min(wnd>>ws, 0xffff))
}

// rstAcceptable reports whether a RST from the guest at seq is to be
// believed: it must start exactly at the next byte expected (RFC 5961's
// strict check; anything else could be a blind attack or a stale segment).
func rstAcceptable(seq, rcvNxt uint32) bool { return seq == rcvNxt }
