// Copyright 2026 The usernet Authors.
//
// Licensed under the Apache License, Version 2.0 (the "License");
// you may not use this file except in compliance with the License.
// You may obtain a copy of the License at
//
//     http://www.apache.org/licenses/LICENSE-2.0
//
// Unless required by applicable law or agreed to in writing, software
// distributed under the License is distributed on an "AS IS" BASIS,
// WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
// See the License for the specific language governing permissions and
// limitations under the License.

package tcp

import (
	"time"

	"gvisor.dev/gvisor/pkg/sync"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/seqnum"
)

// ackLocked acknowledges what has been received: now, or, with delayed
// ACKs on (tcpip.TCPDelayedAckOption), once ackDelay has passed unless a
// segment of ours carries the ACK first. Delayed are only ACKs for less
// than a full segment of data, or for the peer's FIN, in ESTABLISHED or
// CLOSE-WAIT: a request answered within the delay costs the peer one
// segment instead of two. Data out of order and window updates are
// acknowledged at once, as before.
//
// +checklocks:e.mu
func (e *Endpoint) ackLocked() {
	if e.ackDelay > 0 && e.amss > 0 {
		if st := e.EndpointState(); (st == StateEstablished || st == StateCloseWait) &&
			e.snd.MaxSentAck.Size(e.rcv.RcvNxt) < seqnum.Size(e.amss) {
			if !e.ackArmed {
				e.ackArmed = true
				e.ackGen++
				e.protocol.acks.add(e, e.ackGen, e.ackDelay)
			}
			return
		}
	}
	e.snd.sendAck()
}

// ackSentLocked is called whenever a segment carrying an ACK goes out: a
// pending delayed ACK has nothing left to do. Its queue entry stays, and
// finds it disarmed.
//
// +checklocks:e.mu
func (e *Endpoint) ackSentLocked() {
	e.ackArmed = false
}

// delayedAckExpired sends the delayed ACK that no segment of ours carried.
//
// +checklocks:e.mu
func (e *Endpoint) delayedAckExpired() {
	e.ackArmed = false
	if e.EndpointState().connected() && e.rcv.RcvNxt != e.snd.MaxSentAck {
		e.snd.sendAck()
	}
}

// ackQueue holds a protocol's pending delayed ACKs, in the order they were
// armed, behind one clock timer. A timer of each endpoint's own, as
// before, started a goroutine each time it fired (the clock's AfterFunc):
// a thousand connections closed at once (each ACK of a FIN is delayed)
// made a thousand goroutines at once, whose descriptors the Go runtime
// keeps for good. Here one goroutine sends all the ACKs that are due.
//
// The delay is the same for every endpoint of a stack, so the queue is in
// deadline order; an entry armed before the option was lowered may hold
// the ones behind it until its own deadline.
type ackQueue struct {
	mu      sync.Mutex
	pending []ackEntry // +checklocks:mu
	head    int        // +checklocks:mu; pending[:head] are done
	timer   tcpip.Timer
	running bool // +checklocks:mu; the timer is set or its run is under way
}

// ackEntry is an endpoint's delayed ACK: still due if the endpoint's
// ackArmed and ackGen say so when it comes.
type ackEntry struct {
	e   *Endpoint
	gen uint32
	due tcpip.MonotonicTime
}

// add queues e's delayed ACK number gen, due after d. e.mu is held: the
// queue's lock is taken inside endpoints' locks, never around them.
func (q *ackQueue) add(e *Endpoint, gen uint32, d time.Duration) {
	clock := e.stack.Clock()
	q.mu.Lock()
	defer q.mu.Unlock()
	q.pending = append(q.pending, ackEntry{e: e, gen: gen, due: clock.NowMonotonic().Add(d)})
	if q.running {
		return
	}
	q.running = true
	if q.timer == nil {
		q.timer = clock.AfterFunc(d, func() { q.run(clock) })
	} else {
		q.timer.Reset(d)
	}
}

// run sends the delayed ACKs that are due, then sets the timer for the
// next one, if any.
func (q *ackQueue) run(clock tcpip.Clock) {
	var due []ackEntry
	for {
		q.mu.Lock()
		// The last pass's entries are done: drop their endpoints, and
		// the done part of the array once it is half of it.
		clear(due)
		if q.head > 0 && 2*q.head >= len(q.pending) {
			n := copy(q.pending, q.pending[q.head:])
			clear(q.pending[n:])
			q.pending, q.head = q.pending[:n], 0
		}
		now := clock.NowMonotonic()
		i := q.head
		for i < len(q.pending) && !now.Before(q.pending[i].due) {
			i++
		}
		due = q.pending[q.head:i]
		q.head = i
		if len(due) == 0 {
			if len(q.pending) == 0 {
				if cap(q.pending) > 64 {
					q.pending = nil // a burst's array
				}
				q.running = false
			} else {
				q.timer.Reset(q.pending[q.head].due.Sub(now))
			}
			q.mu.Unlock()
			return
		}
		q.mu.Unlock()
		// Only appends touch the array meanwhile, beyond due.
		for _, a := range due {
			sendDelayedAck(a.e, a.gen)
		}
	}
}

// sendDelayedAck sends e's delayed ACK number gen if it is still pending,
// with what a timer's handler does after (timerHandler).
func sendDelayedAck(e *Endpoint, gen uint32) {
	e.mu.Lock()
	if e.ackArmed && e.ackGen == gen {
		e.delayedAckExpired()
	}
	processor := e.protocol.dispatcher.selectProcessor(e.ID)
	e.mu.Unlock()
	if !e.segmentQueue.empty() {
		processor.queueEndpoint(e)
	}
}
