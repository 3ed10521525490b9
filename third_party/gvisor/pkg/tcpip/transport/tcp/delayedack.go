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
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/seqnum"
)

// ackLocked acknowledges what has been received: now, or, with delayed
// ACKs on (tcpip.TCPDelayedAckOption), when ackTimer fires unless a
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
				if e.ackTimer == nil {
					e.ackTimer = e.stack.Clock().AfterFunc(e.ackDelay, timerHandler(e, e.delayedAckExpired))
				} else {
					e.ackTimer.Reset(e.ackDelay)
				}
			}
			return
		}
	}
	e.snd.sendAck()
}

// ackSentLocked is called whenever a segment carrying an ACK goes out: a
// pending delayed ACK has nothing left to do.
//
// +checklocks:e.mu
func (e *Endpoint) ackSentLocked() {
	if e.ackArmed {
		e.ackArmed = false
		e.ackTimer.Stop()
	}
}

// delayedAckExpired sends the delayed ACK that no segment of ours carried.
//
// +checklocks:e.mu
func (e *Endpoint) delayedAckExpired() tcpip.Error {
	if !e.ackArmed {
		return nil
	}
	e.ackArmed = false
	if e.EndpointState().connected() && e.rcv.RcvNxt != e.snd.MaxSentAck {
		e.snd.sendAck()
	}
	return nil
}
