package link

import (
	"encoding/binary"

	"github.com/usernet/usernet/tap"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	gvstack "gvisor.dev/gvisor/pkg/tcpip/stack"
)

// Virtio-net headers (linux/virtio_net.h) on a tap opened with
// IFF_VNET_HDR. Outbound, gVisor's TCP (HostGSO) builds segments of up to
// gsoMaxSize with only the pseudo-header checksum filled in; the header
// tells the kernel to treat them as one GSO packet (local delivery never
// splits it) with CHECKSUM_PARTIAL (nobody sums 64 KiB unless the packet
// leaves through a device without checksum offload). Inbound, the kernel
// does the same for us once tap.Offloads are on. Neither side computes a
// checksum or cuts a segment; at MTU 1500 it turns 1460-byte frames into
// 64 KiB ones (docs/performance.md, Offloads).

const (
	vnetFlagNeedsCsum = 1 // VIRTIO_NET_HDR_F_NEEDS_CSUM
	vnetGSOTCPv4      = 1 // VIRTIO_NET_HDR_GSO_TCPV4
	vnetGSOTCPv6      = 4 // VIRTIO_NET_HDR_GSO_TCPV6
)

// gsoMaxSize bounds gVisor's GSO segments. Its sender puts up to
// gsoMaxSize-61 payload bytes in one (tcp/snd.go: MaxSize minus the
// largest TCP header, minus one), and an IPv4 packet cannot exceed 65535
// bytes: 20 + 60 + (gsoMaxSize-61) ≤ 65535.
const gsoMaxSize = 65535 - header.IPv4MinimumSize

// maxGSOFrame is the largest frame the kernel hands over with TSO on: a
// 64 KiB GSO packet (the tap's default gso_max_size) and its Ethernet
// header.
const maxGSOFrame = 1<<16 + header.EthernetMinimumSize

var _ gvstack.GSOEndpoint = (*Tap)(nil)

// GSOMaxSize implements gvstack.GSOEndpoint.
func (l *Tap) GSOMaxSize() uint32 {
	if l.vnetHdr {
		return gsoMaxSize
	}
	return 0
}

// SupportedGSO implements gvstack.GSOEndpoint: host GSO, i.e. the segments
// go to the kernel whole, described by a virtio-net header.
func (l *Tap) SupportedGSO() gvstack.SupportedGSO {
	if l.vnetHdr {
		return gvstack.HostGSOSupported
	}
	return gvstack.GSONotSupported
}

// vnetHeaderFor returns the virtio-net header for an outbound frame (its
// Ethernet header already pushed by ethernet.New). Frames without GSO
// options (ARP, ICMP, UDP, ...) carry fully computed checksums and get an
// all-zero header.
func vnetHeaderFor(pkt *gvstack.PacketBuffer) [tap.VnetHdrLen]byte {
	var h [tap.VnetHdrLen]byte
	gso := pkt.GSOOptions
	if gso.Type == gvstack.GSONone {
		return h
	}
	binary.LittleEndian.PutUint16(h[2:], uint16(pkt.HeaderSize())) // hdr_len
	if gso.NeedsCsum {
		h[0] = vnetFlagNeedsCsum
		binary.LittleEndian.PutUint16(h[6:], header.EthernetMinimumSize+gso.L3HdrLen) // csum_start
		binary.LittleEndian.PutUint16(h[8:], gso.CsumOffset)                          // csum_offset
	}
	if pkt.Data().Size() > int(gso.MSS) {
		switch gso.Type {
		case gvstack.GSOTCPv4:
			h[1] = vnetGSOTCPv4
		case gvstack.GSOTCPv6:
			h[1] = vnetGSOTCPv6
		default:
			// Only HostGSO is advertised, so only TCP segments carry
			// GSO options; anything else goes out unsegmented.
			return h
		}
		binary.LittleEndian.PutUint16(h[4:], gso.MSS) // gso_size
	}
	return h
}
