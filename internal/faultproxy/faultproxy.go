// Package faultproxy is a TCP proxy for tests that puts faults between a
// client and a server: latency on every forwarded chunk, connections cut,
// and a blocked state in which the server seems unreachable.
//
// A [Proxy] forwards each accepted connection to its target over a
// connection of its own. It never changes the bytes it forwards, and it
// forwards them in order; it only delays them or ends the connection.
// Everything it starts ends with [Proxy.Close], which [Start] registers
// with the test's clean-up.
package faultproxy

import (
	"context"
	"errors"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

const (
	// dialTimeout bounds the connection to the target.
	dialTimeout = 5 * time.Second
	// chunkSize is the most that one read forwards as one chunk.
	chunkSize = 32 << 10
	// queueLen is how many chunks of one direction may wait out their
	// latency at once; a reader that is this far ahead waits.
	queueLen = 64
)

// Stats counts a proxy's connections.
type Stats struct {
	// Accepted is how many connections were accepted and forwarded.
	Accepted int64
	// Refused is how many connections were closed at once because the
	// proxy was blocked (or closing).
	Refused int64
	// Cut is how many forwarded connections [Proxy.Cut], [Proxy.Block] or
	// [Proxy.Close] ended.
	Cut int64
	// DialFailed is how many forwarded connections ended because the
	// target could not be reached.
	DialFailed int64
	// Active is how many forwarded connections are open now.
	Active int
}

// Proxy forwards TCP connections to a target, with faults. Its methods are
// safe for concurrent use.
type Proxy struct {
	target  string
	ln      net.Listener
	latency atomic.Int64 // nanoseconds added to each chunk

	mu      sync.Mutex
	links   map[*link]struct{}
	blocked bool
	closed  bool
	stats   Stats

	wg sync.WaitGroup // the accept loop and every link
}

// Start starts a proxy on a free loopback port that forwards to target
// (host:port), and closes it when the test ends.
func Start(tb testing.TB, target string) *Proxy {
	tb.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatalf("faultproxy: listen: %v", err)
	}
	p := &Proxy{target: target, ln: ln, links: make(map[*link]struct{})}
	p.wg.Add(1)
	go p.accept()
	tb.Cleanup(p.Close)
	return p
}

// Addr returns the address that clients dial, host:port.
func (p *Proxy) Addr() string { return p.ln.Addr().String() }

// SetLatency holds each chunk read from then on for d before it is
// forwarded, in both directions: a request and its answer are each
// delayed by d. Chunks keep their order, and a stream of them is delayed,
// not slowed: each waits d from the moment it was read. Zero turns the
// latency off.
func (p *Proxy) SetLatency(d time.Duration) { p.latency.Store(int64(max(d, 0))) }

// Cut closes every connection open now, on both sides. New connections
// are forwarded as before.
func (p *Proxy) Cut() {
	p.mu.Lock()
	links := p.takeLinks()
	p.mu.Unlock()
	for _, l := range links {
		l.close()
	}
}

// Block cuts every open connection and closes each new one as soon as it
// is accepted, until [Proxy.Unblock]: to the clients, the target is gone.
func (p *Proxy) Block() {
	p.mu.Lock()
	p.blocked = true
	links := p.takeLinks()
	p.mu.Unlock()
	for _, l := range links {
		l.close()
	}
}

// Unblock forwards new connections again after [Proxy.Block].
func (p *Proxy) Unblock() {
	p.mu.Lock()
	p.blocked = false
	p.mu.Unlock()
}

// Stats returns the proxy's counters.
func (p *Proxy) Stats() Stats {
	p.mu.Lock()
	defer p.mu.Unlock()
	s := p.stats
	s.Active = len(p.links)
	return s
}

// Close stops accepting, cuts every connection, and returns once every
// goroutine of the proxy has returned. It may be called more than once.
func (p *Proxy) Close() {
	p.mu.Lock()
	p.closed = true
	links := p.takeLinks()
	p.mu.Unlock()
	_ = p.ln.Close()
	for _, l := range links {
		l.close()
	}
	p.wg.Wait()
}

// takeLinks empties the set of open links, counting them as cut, and
// returns them. The caller holds p.mu.
func (p *Proxy) takeLinks() []*link {
	links := make([]*link, 0, len(p.links))
	for l := range p.links {
		links = append(links, l)
		delete(p.links, l)
	}
	p.stats.Cut += int64(len(links))
	return links
}

func (p *Proxy) accept() {
	defer p.wg.Done()
	for {
		conn, err := p.ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			// A transient failure, such as too many open files: try again
			// shortly, unless the proxy is closing.
			time.Sleep(5 * time.Millisecond)
			continue
		}
		p.mu.Lock()
		if p.blocked || p.closed {
			p.stats.Refused++
			p.mu.Unlock()
			_ = conn.Close()
			continue
		}
		l := newLink(p, conn)
		p.links[l] = struct{}{}
		p.stats.Accepted++
		// Close waits for this link: it cannot have started waiting yet,
		// since it sets closed under the lock held here.
		p.wg.Add(1)
		p.mu.Unlock()
		go l.run()
	}
}

// remove forgets a link that ended on its own.
func (p *Proxy) remove(l *link) {
	p.mu.Lock()
	delete(p.links, l)
	p.mu.Unlock()
}

// link is one forwarded connection: the client's and the proxy's own to
// the target.
type link struct {
	p      *Proxy
	client net.Conn
	ctx    context.Context // done once the link is closed
	cancel context.CancelFunc

	mu     sync.Mutex
	server net.Conn // nil until dialled
	once   sync.Once
}

func newLink(p *Proxy, client net.Conn) *link {
	ctx, cancel := context.WithCancel(context.Background())
	return &link{p: p, client: client, ctx: ctx, cancel: cancel}
}

// close ends the link on both sides; its goroutines then return.
func (l *link) close() {
	l.once.Do(func() {
		l.mu.Lock()
		l.cancel()
		server := l.server
		l.mu.Unlock()
		_ = l.client.Close()
		if server != nil {
			_ = server.Close()
		}
	})
}

func (l *link) run() {
	defer l.p.wg.Done()
	defer l.p.remove(l)
	defer l.close()

	d := net.Dialer{Timeout: dialTimeout}
	server, err := d.DialContext(l.ctx, "tcp", l.p.target)
	if err != nil {
		if l.ctx.Err() == nil {
			l.p.mu.Lock()
			l.p.stats.DialFailed++
			l.p.mu.Unlock()
		}
		return
	}
	l.mu.Lock()
	if l.ctx.Err() != nil {
		// Cut while dialling.
		l.mu.Unlock()
		_ = server.Close()
		return
	}
	l.server = server
	l.mu.Unlock()

	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		l.forward(server, l.client)
	}()
	l.forward(l.client, server)
	wg.Wait()
}

// chunk is a piece of the stream that may be forwarded once due.
type chunk struct {
	data []byte
	due  time.Time
}

// forward copies src to dst, each chunk held for the proxy's latency. When
// src ends cleanly, dst's writing side is closed, so that a half-close
// reaches the other end; any other failure closes the link.
func (l *link) forward(dst, src net.Conn) {
	chunks := make(chan chunk, queueLen)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		defer close(chunks)
		l.read(src, chunks)
	}()
	defer wg.Wait()

	timer := time.NewTimer(time.Hour)
	timer.Stop()
	defer timer.Stop()
	for c := range chunks {
		if wait := time.Until(c.due); wait > 0 {
			timer.Reset(wait)
			select {
			case <-timer.C:
			case <-l.ctx.Done():
				return
			}
		}
		if _, err := dst.Write(c.data); err != nil {
			l.close()
			return
		}
	}
	if l.ctx.Err() != nil {
		return
	}
	if tcp, ok := dst.(*net.TCPConn); ok {
		if err := tcp.CloseWrite(); err != nil {
			l.close()
		}
		return
	}
	l.close()
}

// read sends src's chunks until it ends or the link is closed.
func (l *link) read(src net.Conn, chunks chan<- chunk) {
	buf := make([]byte, chunkSize)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			c := chunk{data: append([]byte(nil), buf[:n]...)}
			if d := time.Duration(l.p.latency.Load()); d > 0 {
				c.due = time.Now().Add(d)
			}
			select {
			case chunks <- c:
			case <-l.ctx.Done():
				return
			}
		}
		if err != nil {
			if !errors.Is(err, io.EOF) {
				l.close()
			}
			return
		}
	}
}
