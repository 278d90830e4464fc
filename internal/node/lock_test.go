package node_test

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/drover/drover/internal/lock"
	"github.com/drover/drover/internal/node"
	"github.com/drover/drover/internal/testenv/apptest"
	"github.com/drover/drover/internal/transport/local"
)

// session is a `drover node serve` child the test drives by hand: its
// stdin and stdout are pipes the test holds, as a deployer's SSH channel.
type session struct {
	cmd   *exec.Cmd
	done  chan struct{} // closed when the process has exited
	stdin io.WriteCloser
	out   io.ReadCloser
	lines *bufio.Scanner
}

func startSession(t *testing.T, bin string, req *node.Request) *session {
	t.Helper()
	cmd := exec.Command(bin, "node", "serve")
	// Plain pipes, which Wait leaves alone: the test closes its ends itself.
	inR, stdin, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	out, outW, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stdin, cmd.Stdout = inR, outW
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	inR.Close()
	outW.Close()
	t.Cleanup(func() { stdin.Close(); out.Close() })
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-done
	})
	s := &session{cmd: cmd, done: done, stdin: stdin, out: out, lines: bufio.NewScanner(out)}
	req.Protocol = node.ProtocolVersion
	body, _ := json.Marshal(req)
	if _, err := stdin.Write(append(body, '\n')); err != nil {
		t.Fatal(err)
	}
	return s
}

// next returns the next JSON line the session writes, as a generic map.
func (s *session) next(t *testing.T) map[string]json.RawMessage {
	t.Helper()
	if !s.lines.Scan() {
		t.Fatalf("session ended: %v", s.lines.Err())
	}
	var m map[string]json.RawMessage
	if err := json.Unmarshal(s.lines.Bytes(), &m); err != nil {
		t.Fatalf("not a protocol line: %q", s.lines.Text())
	}
	return m
}

// waitFor polls cond until it holds or timeout passes.
func waitFor(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", timeout, what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestLockLapsesWithoutHeartbeat: a deployer whose channel stays open but
// that stops heartbeating (a suspended laptop, a partition TCP has not
// noticed) loses the lock once its lease runs out, and a second deployer
// then gets it. A deployer that heartbeats keeps it past many leases.
func TestLockLapsesWithoutHeartbeat(t *testing.T) {
	if testing.Short() {
		t.Skip("builds drover")
	}
	a := apptest.New(t, apptest.Options{NoService: true})
	bin := apptest.DroverBinary(t)
	lease := time.Second
	lockReq := func(owner string) *node.Request {
		return &node.Request{Op: node.OpLock, App: a.Config, Env: "test", Host: "local", Holder: &lock.Holder{Owner: owner, Lease: lease}}
	}

	// A live deployer, heartbeating through node.Hold, keeps its lock.
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	conn := &local.Conn{Binary: bin}
	held, err := node.Hold(ctx, conn, lockReq("alice@laptop"))
	if err != nil {
		t.Fatal(err)
	}
	lk := &lock.File{Path: filepath.Join(a.DeployTo, ".drover", "lock")}
	for end := time.Now().Add(4 * lease); time.Now().Before(end); time.Sleep(100 * time.Millisecond) {
		if h, err := lk.Read(); err != nil || h == nil || h.Token != held.Holder.Token {
			t.Fatalf("a heartbeating holder lost its lock: %+v %v", h, err)
		}
	}
	if err := held.Release(); err != nil {
		t.Fatal(err)
	}

	// A silent one: the channel stays open, nothing comes through it.
	s := startSession(t, bin, lockReq("bob@suspended"))
	if m := s.next(t); m["locked"] == nil {
		t.Fatalf("no lock: %v", m)
	}
	var second *node.Held
	waitFor(t, 10*lease, "the silent holder's lease to lapse", func() bool {
		h, err := node.Hold(ctx, conn, lockReq("carol@ci"))
		var he *lock.HeldError
		if err != nil && !errors.As(err, &he) {
			t.Fatalf("second deployer: %v", err)
		}
		second = h
		return err == nil
	})
	defer second.Release()
	m := s.next(t)
	if !strings.Contains(string(m["result"]), "heartbeat") {
		t.Errorf("the silent holder was not told why it lost the lock: %s", m["result"])
	}
}
