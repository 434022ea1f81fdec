package faultproxy_test

import (
	"bytes"
	"crypto/rand"
	"errors"
	"io"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/idemkey/idempotency/internal/faultproxy"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// echoServer starts a TCP server that echoes what it reads and closes each
// connection once the client has closed its side. It stops when the test
// ends.
func echoServer(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	var (
		mu    sync.Mutex
		conns []net.Conn
		wg    sync.WaitGroup
	)
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
			wg.Add(1)
			go func() {
				defer wg.Done()
				_, _ = io.Copy(c, c)
				_ = c.Close()
			}()
		}
	}()
	t.Cleanup(func() {
		_ = ln.Close()
		mu.Lock()
		for _, c := range conns {
			_ = c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	return ln.Addr().String()
}

func dial(t *testing.T, addr string) net.Conn {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	require.NoError(t, err)
	t.Cleanup(func() { _ = c.Close() })
	require.NoError(t, c.SetDeadline(time.Now().Add(10*time.Second)))
	return c
}

// roundTrip writes msg and reads as many bytes back.
func roundTrip(t *testing.T, c net.Conn, msg []byte) []byte {
	t.Helper()
	errs := make(chan error, 1)
	go func() {
		_, err := c.Write(msg)
		errs <- err
	}()
	got := make([]byte, len(msg))
	_, err := io.ReadFull(c, got)
	require.NoError(t, err)
	require.NoError(t, <-errs)
	return got
}

// assertClosed checks that the proxy ends c soon: a read returns no data
// but an error (EOF or a reset).
func assertClosed(t *testing.T, c net.Conn) {
	t.Helper()
	require.NoError(t, c.SetReadDeadline(time.Now().Add(2*time.Second)))
	n, err := c.Read(make([]byte, 1))
	assert.Zero(t, n)
	if assert.Error(t, err) {
		var netErr net.Error
		timedOut := errors.As(err, &netErr) && netErr.Timeout()
		assert.False(t, timedOut, "the connection was not closed within 2 s")
	}
}

func TestForward(t *testing.T) {
	t.Parallel()
	big := make([]byte, 1<<20)
	_, _ = rand.Read(big)
	tests := []struct {
		name string
		msg  []byte
	}{
		{name: "one byte", msg: []byte{0}},
		{name: "line", msg: []byte("PING\r\n")},
		{name: "1 MiB random", msg: big},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			p := faultproxy.Start(t, echoServer(t))
			c := dial(t, p.Addr())
			assert.True(t, bytes.Equal(tt.msg, roundTrip(t, c, tt.msg)), "bytes must pass unchanged")
			st := p.Stats()
			assert.Equal(t, int64(1), st.Accepted)
			assert.Equal(t, 1, st.Active)
		})
	}
}

func TestLatency(t *testing.T) {
	t.Parallel()
	// Long enough that the bounds below hold on a busy machine.
	const latency = 500 * time.Millisecond
	p := faultproxy.Start(t, echoServer(t))
	c := dial(t, p.Addr())
	roundTrip(t, c, []byte("warm")) // the dial is not part of the figure

	p.SetLatency(latency)
	start := time.Now()
	roundTrip(t, c, []byte("ping"))
	elapsed := time.Since(start)
	assert.GreaterOrEqual(t, elapsed, 2*latency, "a round trip crosses the proxy twice")
	assert.Less(t, elapsed, 2*latency+3*time.Second)

	// A stream of many chunks is delayed, not slowed by one latency per
	// chunk: 1 MiB is at least 32 chunks, which would take 32 latencies.
	big := make([]byte, 1<<20)
	start = time.Now()
	roundTrip(t, c, big)
	assert.Less(t, time.Since(start), 8*latency, "chunks wait out their latency together")

	p.SetLatency(0)
	start = time.Now()
	roundTrip(t, c, []byte("pong"))
	assert.Less(t, time.Since(start), 2*latency, "no latency once it is set to zero")
}

func TestCut(t *testing.T) {
	t.Parallel()
	p := faultproxy.Start(t, echoServer(t))
	a, b := dial(t, p.Addr()), dial(t, p.Addr())
	roundTrip(t, a, []byte("a"))
	roundTrip(t, b, []byte("b"))

	p.Cut()
	assertClosed(t, a)
	assertClosed(t, b)

	c := dial(t, p.Addr())
	assert.Equal(t, []byte("c"), roundTrip(t, c, []byte("c")), "new connections are forwarded after a cut")
	st := p.Stats()
	assert.Equal(t, int64(3), st.Accepted)
	assert.Equal(t, int64(2), st.Cut)
	assert.Equal(t, 1, st.Active)
}

func TestBlock(t *testing.T) {
	t.Parallel()
	p := faultproxy.Start(t, echoServer(t))
	before := dial(t, p.Addr())
	roundTrip(t, before, []byte("x"))

	p.Block()
	assertClosed(t, before)
	during := dial(t, p.Addr())
	_, _ = during.Write([]byte("y"))
	assertClosed(t, during)

	p.Unblock()
	after := dial(t, p.Addr())
	assert.Equal(t, []byte("z"), roundTrip(t, after, []byte("z")), "forwarding resumes after Unblock")
	st := p.Stats()
	assert.Equal(t, int64(2), st.Accepted)
	assert.Equal(t, int64(1), st.Refused)
	assert.Equal(t, int64(1), st.Cut)
}

func TestHalfClose(t *testing.T) {
	t.Parallel()
	p := faultproxy.Start(t, echoServer(t))
	c := dial(t, p.Addr())
	_, err := c.Write([]byte("last words"))
	require.NoError(t, err)
	require.NoError(t, c.(*net.TCPConn).CloseWrite())
	got, err := io.ReadAll(c)
	require.NoError(t, err, "the server's answer and its close must come through")
	assert.Equal(t, "last words", string(got))
	assert.Eventually(t, func() bool { return p.Stats().Active == 0 }, 10*time.Second, 5*time.Millisecond,
		"a link closed by both ends is forgotten")
}

func TestDialFailure(t *testing.T) {
	t.Parallel()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	dead := ln.Addr().String()
	require.NoError(t, ln.Close())

	p := faultproxy.Start(t, dead)
	c := dial(t, p.Addr())
	assertClosed(t, c)
	assert.Eventually(t, func() bool { return p.Stats().DialFailed == 1 }, 10*time.Second, 5*time.Millisecond)
}

// TestCloseLeavesNoGoroutine closes a proxy with connections open and
// chunks waiting out their latency: every goroutine must be gone when
// Close returns, and the clients see their connections end.
func TestCloseLeavesNoGoroutine(t *testing.T) {
	// Not parallel: goleak sees every goroutine of the process.
	ignore := goleak.IgnoreCurrent()
	// Registered first, so that it runs after the echo server has stopped.
	t.Cleanup(func() { goleak.VerifyNone(t, ignore) })

	p := faultproxy.Start(t, echoServer(t))
	idle := dial(t, p.Addr())
	roundTrip(t, idle, []byte("idle"))
	p.Block() // cuts idle
	p.Unblock()
	again := dial(t, p.Addr())
	roundTrip(t, again, []byte("again"))
	busy := dial(t, p.Addr())
	p.SetLatency(time.Hour)
	_, err := busy.Write([]byte("held for an hour"))
	require.NoError(t, err)
	require.Eventually(t, func() bool { return p.Stats().Active == 2 }, 10*time.Second, time.Millisecond)

	done := make(chan struct{})
	go func() {
		p.Close()
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		require.FailNow(t, "Close did not return")
	}
	p.Close() // a second Close is harmless
	for _, c := range []net.Conn{idle, again, busy} {
		assertClosed(t, c)
	}
	st := p.Stats()
	assert.Zero(t, st.Active)
	assert.Equal(t, int64(3), st.Cut, "the link cut by Block, and the two cut by Close")
	_, err = net.DialTimeout("tcp", p.Addr(), time.Second)
	assert.Error(t, err, "a closed proxy accepts nothing")
}
