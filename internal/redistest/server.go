package redistest

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

const (
	// startTimeout bounds how long a server may take to answer PING.
	startTimeout = 15 * time.Second
	// stopTimeout bounds how long a server may take to exit after SIGTERM
	// before it is killed.
	stopTimeout = 10 * time.Second
	// startAttempts is how often a fresh server is tried on new ports when
	// the one it was given was taken in the meantime.
	startAttempts = 4
)

// A ServerOption configures a server started by [StartServer].
type ServerOption func(*serverConfig)

type serverConfig struct {
	appendOnly bool
	args       []string
}

// WithAppendOnly makes the server persist every write before it answers
// (`appendonly yes`, `appendfsync always`), so that a killed and restarted
// server has lost nothing. By default, the server persists nothing.
func WithAppendOnly() ServerOption {
	return func(c *serverConfig) { c.appendOnly = true }
}

// WithArgs adds configuration to the server's command line, as pairs such
// as "--maxmemory", "10mb". By default, nothing is added.
func WithArgs(args ...string) ServerOption {
	return func(c *serverConfig) { c.args = append(c.args, args...) }
}

// Server is a redis-server process of its own, on a free loopback port,
// with its files in a temporary folder. It can be stopped and started again
// on the same port with the same files. Its methods must be called from the
// test's goroutine, since they fail the test on error.
type Server struct {
	tb   testing.TB
	dir  string
	port int
	args []string

	mu   sync.Mutex
	proc *process
}

// StartServer starts a redis-server of the test's own and stops it when the
// test ends. It skips the test, or fails it under IDEMPOTENCY_REQUIRE_REDIS=1,
// when redis-server is not installed.
func StartServer(tb testing.TB, opts ...ServerOption) *Server {
	tb.Helper()
	var cfg serverConfig
	for _, opt := range opts {
		opt(&cfg)
	}
	s, err := startOnFreePort(tb, tb.TempDir(), false, cfg.serverArgs())
	if err != nil {
		tb.Fatalf("redistest: %v", err)
	}
	tb.Cleanup(s.shutdown)
	return s
}

func (cfg serverConfig) serverArgs() []string {
	var extra []string
	if cfg.appendOnly {
		extra = append(extra, "--appendonly", "yes", "--appendfsync", "always")
	}
	return append(extra, cfg.args...)
}

// startOnFreePort starts a server in dir on a free port, trying again on
// new ports when another process took the port between our probe and the
// server's bind. With clusterBus, the server also gets a free cluster bus
// port: the default, the port plus 10000, does not exist above 55535.
func startOnFreePort(tb testing.TB, dir string, clusterBus bool, extra []string) (*Server, error) {
	tb.Helper()
	bin, err := lookPath(tb, "redis-server")
	if err != nil {
		return nil, err
	}
	var lastErr error
	for range startAttempts {
		n := 1
		if clusterBus {
			n = 2
		}
		ports, err := freePorts(n)
		if err != nil {
			return nil, err
		}
		s := &Server{tb: tb, dir: dir, port: ports[0]}
		s.args = baseArgs(s.port, dir)
		if clusterBus {
			s.args = append(s.args, "--cluster-port", strconv.Itoa(ports[1]))
		}
		s.args = append(s.args, extra...)
		if err := s.start(bin); err != nil {
			lastErr = err
			if errors.Is(err, errPortTaken) {
				continue
			}
			return nil, err
		}
		return s, nil
	}
	return nil, lastErr
}

func baseArgs(port int, dir string) []string {
	return []string{
		"--port", strconv.Itoa(port),
		"--bind", "127.0.0.1",
		"--save", "",
		"--appendonly", "no",
		"--dir", dir,
		"--logfile", logFile(dir),
		"--daemonize", "no",
	}
}

func logFile(dir string) string { return filepath.Join(dir, "redis.log") }

// Addr returns the server's address, host:port.
func (s *Server) Addr() string {
	return net.JoinHostPort("127.0.0.1", strconv.Itoa(s.port))
}

// Dir returns the folder that holds the server's files.
func (s *Server) Dir() string { return s.dir }

// Client returns a new client of the server, with ContextTimeoutEnabled,
// closed when the test ends.
func (s *Server) Client(tb testing.TB) *redis.Client {
	tb.Helper()
	return NewClient(tb, &redis.Options{Addr: s.Addr()})
}

// Stop shuts the server down (SIGTERM: it writes its append-only file, if
// any, and exits) and waits until it has exited. Stopping a stopped server
// does nothing.
func (s *Server) Stop() {
	s.tb.Helper()
	if err := s.stop(syscall.SIGTERM); err != nil {
		s.tb.Fatalf("redistest: stop %s: %v", s.Addr(), err)
	}
}

// Kill kills the server (SIGKILL, as a crash would) and waits until it has
// exited. Killing a stopped server does nothing.
func (s *Server) Kill() {
	s.tb.Helper()
	if err := s.stop(syscall.SIGKILL); err != nil {
		s.tb.Fatalf("redistest: kill %s: %v", s.Addr(), err)
	}
}

// Start starts a stopped server again, on the same port and with the same
// files, and waits until it answers. Starting a running server does nothing.
func (s *Server) Start() {
	s.tb.Helper()
	bin, err := lookPath(s.tb, "redis-server")
	if err != nil {
		s.tb.Fatalf("redistest: %v", err)
	}
	s.mu.Lock()
	running := s.proc != nil
	s.mu.Unlock()
	if running {
		return
	}
	// The port may briefly still be held by the old server's closing
	// sockets, or taken by someone else; only the first case passes.
	deadline := time.Now().Add(startTimeout)
	for {
		err := s.start(bin)
		if err == nil {
			return
		}
		if !errors.Is(err, errPortTaken) || time.Now().After(deadline) {
			s.tb.Fatalf("redistest: restart %s: %v", s.Addr(), err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func (s *Server) shutdown() {
	if err := s.stop(syscall.SIGKILL); err != nil {
		s.tb.Errorf("redistest: stop %s: %v", s.Addr(), err)
	}
}

var errPortTaken = errors.New("port already in use")

func (s *Server) start(bin string) error {
	// The log of an earlier run would confuse the port check below.
	_ = os.Remove(logFile(s.dir))
	cmd := exec.Command(bin, s.args...)
	cmd.Dir = s.dir
	dieWithParent(cmd)
	p, err := spawn(cmd)
	if err != nil {
		return fmt.Errorf("start redis-server: %w", err)
	}
	if err := waitReady(s.Addr(), p); err != nil {
		_ = p.signal(syscall.SIGKILL)
		<-p.done
		log := readLog(s.dir)
		if strings.Contains(log, "Address already in use") {
			return fmt.Errorf("%s: %w", s.Addr(), errPortTaken)
		}
		return fmt.Errorf("redis-server on %s did not start: %w\n%s", s.Addr(), err, log)
	}
	s.mu.Lock()
	s.proc = p
	s.mu.Unlock()
	return nil
}

func (s *Server) stop(sig syscall.Signal) error {
	s.mu.Lock()
	p := s.proc
	s.proc = nil
	s.mu.Unlock()
	if p == nil {
		return nil
	}
	if err := p.signal(sig); err != nil {
		return err
	}
	select {
	case <-p.done:
		return nil
	case <-time.After(stopTimeout):
	}
	_ = p.signal(syscall.SIGKILL)
	<-p.done
	return fmt.Errorf("server did not exit within %v of %v; killed", stopTimeout, sig)
}

// process is a running redis-server.
type process struct {
	cmd  *exec.Cmd
	done chan struct{} // closed when the process has exited
}

// spawn starts cmd from a goroutine locked to its OS thread, which waits
// for the process. The death signal that [dieWithParent] sets is tied to
// the thread that started the child, and the Go runtime may end an idle
// thread; a thread locked by a goroutine that never unlocks lives until
// that goroutine ends, which is after the child has exited.
func spawn(cmd *exec.Cmd) (*process, error) {
	p := &process{cmd: cmd, done: make(chan struct{})}
	started := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		if err := cmd.Start(); err != nil {
			started <- err
			return
		}
		started <- nil
		_ = cmd.Wait()
		close(p.done)
	}()
	if err := <-started; err != nil {
		return nil, err
	}
	return p, nil
}

func (p *process) signal(sig os.Signal) error {
	select {
	case <-p.done:
		return nil
	default:
	}
	err := p.cmd.Process.Signal(sig)
	if errors.Is(err, os.ErrProcessDone) {
		return nil
	}
	return err
}

// waitReady waits until the server at addr answers PING, or its process
// exits, or startTimeout passes.
func waitReady(addr string, p *process) error {
	deadline := time.Now().Add(startTimeout)
	for {
		err := ping(addr)
		if err == nil {
			return nil
		}
		select {
		case <-p.done:
			return errors.New("redis-server exited")
		default:
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("no answer to PING within %v: %w", startTimeout, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// ping sends PING over a plain connection, so that readiness checks stay
// out of the clients that tests count commands on.
func ping(addr string) error {
	conn, err := net.DialTimeout("tcp", addr, time.Second)
	if err != nil {
		return err
	}
	defer conn.Close()
	if err := conn.SetDeadline(time.Now().Add(time.Second)); err != nil {
		return err
	}
	if _, err := conn.Write([]byte("PING\r\n")); err != nil {
		return err
	}
	line, err := bufio.NewReader(conn).ReadString('\n')
	if err != nil {
		return err
	}
	if line != "+PONG\r\n" {
		// A server still loading its append-only file answers -LOADING.
		return fmt.Errorf("PING answered %q", strings.TrimSpace(line))
	}
	return nil
}

func readLog(dir string) string {
	b, err := os.ReadFile(logFile(dir))
	if err != nil {
		return "(no log: " + err.Error() + ")"
	}
	const tail = 4 << 10
	if len(b) > tail {
		b = b[len(b)-tail:]
	}
	return string(bytes.TrimSpace(b))
}

// freePorts returns n distinct loopback ports that were free a moment ago.
// Holding all listeners until every port is known keeps them distinct;
// another process may still take one before the server binds it, which
// [startOnFreePort] handles.
func freePorts(n int) ([]int, error) {
	ports := make([]int, 0, n)
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, fmt.Errorf("find a free port: %w", err)
		}
		defer l.Close()
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}
