package pcap

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"time"
)

// Record is one frame read back from a capture.
type Record struct {
	Time    time.Time
	Data    []byte // the frame, cut at the snap length
	OrigLen int    // the frame's length on the link
}

// ReadAll reads a whole capture as Writer writes it (little-endian,
// microseconds, Ethernet): for tests and tools, not the data path. A
// record cut short by the end of the file (a capture still being written,
// or stopped by a write error) ends it without an error.
func ReadAll(r io.Reader) ([]Record, error) {
	var h [FileHeaderLen]byte
	if _, err := io.ReadFull(r, h[:]); err != nil {
		return nil, fmt.Errorf("pcap: file header: %w", err)
	}
	le := binary.LittleEndian
	switch {
	case le.Uint32(h[0:]) != Magic:
		return nil, fmt.Errorf("pcap: magic %#x, want %#x little-endian", le.Uint32(h[0:]), Magic)
	case le.Uint16(h[4:]) != VersionMajor || le.Uint16(h[6:]) != VersionMinor:
		return nil, fmt.Errorf("pcap: version %d.%d, want %d.%d", le.Uint16(h[4:]), le.Uint16(h[6:]), VersionMajor, VersionMinor)
	case le.Uint32(h[20:]) != LinkTypeEthernet:
		return nil, fmt.Errorf("pcap: link type %d, want Ethernet", le.Uint32(h[20:]))
	}
	snap := le.Uint32(h[16:])
	var recs []Record
	for {
		var rh [RecordHeaderLen]byte
		if _, err := io.ReadFull(r, rh[:]); err != nil {
			if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
				return recs, nil
			}
			return recs, err
		}
		incl, orig := le.Uint32(rh[8:]), le.Uint32(rh[12:])
		if incl > snap || incl > orig {
			return recs, fmt.Errorf("pcap: record %d: %d bytes of %d, snap length %d", len(recs), incl, orig, snap)
		}
		data := make([]byte, incl)
		if _, err := io.ReadFull(r, data); err != nil {
			if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
				return recs, nil
			}
			return recs, err
		}
		recs = append(recs, Record{
			Time:    time.Unix(int64(le.Uint32(rh[0:])), int64(le.Uint32(rh[4:]))*1000),
			Data:    data,
			OrigLen: int(orig),
		})
	}
}
