package grpcmw

import (
	"sync"

	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"
)

// recordingStream is the transport stream a guarded handler runs with: it
// forwards SetHeader, SendHeader and SetTrailer to the server's stream and
// keeps what the stream accepted, so that a replay can set it again. Outside
// a grpc-go server (a handler called directly, with no stream in its
// context) it keeps the metadata and accepts every call.
type recordingStream struct {
	inner grpc.ServerTransportStream

	mu      sync.Mutex
	header  metadata.MD
	trailer metadata.MD
}

var _ grpc.ServerTransportStream = (*recordingStream)(nil)

// Method returns the method of the call.
func (s *recordingStream) Method() string {
	if s.inner == nil {
		return ""
	}
	return s.inner.Method()
}

// SetHeader forwards md and records it.
func (s *recordingStream) SetHeader(md metadata.MD) error {
	if s.inner != nil {
		if err := s.inner.SetHeader(md); err != nil {
			return err
		}
	}
	s.mu.Lock()
	s.header = join(s.header, md)
	s.mu.Unlock()
	return nil
}

// SendHeader forwards md and records it.
func (s *recordingStream) SendHeader(md metadata.MD) error {
	if s.inner != nil {
		if err := s.inner.SendHeader(md); err != nil {
			return err
		}
	}
	s.mu.Lock()
	s.header = join(s.header, md)
	s.mu.Unlock()
	return nil
}

// SetTrailer forwards md and records it.
func (s *recordingStream) SetTrailer(md metadata.MD) error {
	if s.inner != nil {
		if err := s.inner.SetTrailer(md); err != nil {
			return err
		}
	}
	s.mu.Lock()
	s.trailer = join(s.trailer, md)
	s.mu.Unlock()
	return nil
}

// recorded returns the metadata recorded so far.
func (s *recordingStream) recorded() (header, trailer metadata.MD) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.header, s.trailer
}

// join appends md to dst, copying the values.
func join(dst, md metadata.MD) metadata.MD {
	for k, vs := range md {
		if dst == nil {
			dst = make(metadata.MD, len(md))
		}
		dst[k] = append(dst[k], vs...)
	}
	return dst
}
