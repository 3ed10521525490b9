// Package link is the tap device's fd as a gVisor link endpoint: it reads
// and writes whole Ethernet frames, with virtio-net headers and TCP/UDP
// offloads when the tap has them (vnet.go), and orders the frames it
// writes through a small tx queue and writer goroutine (txqueue.go). A
// Capture, when set, sees every frame both ways (--pcap).
//
// It owns the reader and writer goroutines it starts (Attach starts them,
// Attach(nil) stops them and waits), not the fd: whoever made the Tap
// closes the file after detaching it. It knows frames, not protocols: it
// must not import the rest of usernet (stack sits on top of it).
package link
