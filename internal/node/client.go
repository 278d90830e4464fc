package node

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"
	"time"

	"github.com/drover/drover/internal/lock"
	"github.com/drover/drover/internal/release"
)

// Conn runs `drover node serve` on a host once per call, wiring its stdin
// and stdout. A transport implements it: a child process locally, an SSH
// session remotely.
type Conn interface {
	Serve(ctx context.Context, stdin io.Reader, stdout io.Writer) error
}

// Call sends req over conn and returns the host's response, passing each
// event to onEvent (which may be nil) as it arrives. A transport failure
// (the host unreachable, the process killed) is an error; a failed
// operation is a Response with OK false.
func Call(ctx context.Context, conn Conn, req *Request, onEvent func(release.Event)) (*Response, error) {
	return call(ctx, conn, req, onEvent, nil)
}

// CallBarrier sends an activate as a two-step Barrier request: once the
// host reports it is ready to switch, ready is called (on its own
// goroutine; it may block until every host is ready) and its answer is
// sent as the go line: true switches, false calls the switch off. A host
// that answers without being ready (it failed before, or had nothing to
// switch) never calls ready.
func CallBarrier(ctx context.Context, conn Conn, req *Request, onEvent func(release.Event), ready func() bool) (*Response, error) {
	req.Barrier = true
	return call(ctx, conn, req, onEvent, ready)
}

func call(ctx context.Context, conn Conn, req *Request, onEvent func(release.Event), ready func() bool) (*Response, error) {
	req.Protocol = ProtocolVersion
	body, err := json.Marshal(req)
	if err != nil {
		return nil, err
	}
	body = append(body, '\n')
	var (
		stdin   io.Reader = bytes.NewReader(body)
		onReady func()
		closeIn = func() {}
	)
	if ready != nil {
		// stdin stays open for the go line, and closes once it is sent or
		// the host's output ends.
		inR, inW := io.Pipe()
		stdin = inR
		go func() { _, _ = inW.Write(body) }()
		var once sync.Once
		closeIn = func() { once.Do(func() { inW.Close() }) }
		defer closeIn()
		onReady = func() {
			go func() {
				line, _ := json.Marshal(goLine{Go: ready()})
				_, _ = inW.Write(append(line, '\n'))
				closeIn()
			}()
		}
	}
	pr, pw := io.Pipe()
	var (
		resp    *Response
		decErr  error
		wg      sync.WaitGroup
		garbage bytes.Buffer
	)
	wg.Add(1)
	go func() {
		defer wg.Done()
		resp, decErr = readMessages(pr, onEvent, nil, onReady, &garbage)
		closeIn() // answered or gone: nothing more to send
		_, _ = io.Copy(io.Discard, pr)
	}()
	runErr := conn.Serve(ctx, stdin, pw)
	pw.Close()
	wg.Wait()
	if resp != nil {
		return resp, nil
	}
	return nil, transportError(runErr, decErr, garbage.String())
}

func transportError(runErr, decErr error, garbage string) error {
	msg := strings.TrimSpace(garbage)
	switch {
	case runErr != nil && msg != "":
		return fmt.Errorf("%w (output: %s)", runErr, msg)
	case runErr != nil:
		return runErr
	case decErr != nil:
		return decErr
	case msg != "":
		return fmt.Errorf("no result from drover node: %s", msg)
	}
	return errors.New("no result from drover node (the process ended without answering)")
}

// maxMessage is the longest protocol line the deployer reads. A host cuts
// output lines at release.MaxLine and a result carries at most a tail of
// such lines, so no message of a current host comes near it; a longer line
// is skipped (and named in garbage) rather than ending the session.
const maxMessage = 16 << 20

// readMessages decodes JSON lines until a result arrives. Lines that are
// not JSON (a shell's complaint) are kept in garbage for the error.
func readMessages(r io.Reader, onEvent func(release.Event), onLocked func(lock.Holder), onReady func(), garbage *bytes.Buffer) (*Response, error) {
	ready := func() { // once: the host is ready to switch (a barrier activate)
		if onReady != nil {
			onReady()
			onReady = nil
		}
	}
	br := bufio.NewReaderSize(r, 64<<10)
	var line []byte
	for {
		chunk, err := br.ReadSlice('\n')
		if len(line)+len(chunk) <= maxMessage {
			line = append(line, chunk...)
		} else {
			// Over the limit: drop what was read and the rest of the line.
			line = line[:0]
			for errors.Is(err, bufio.ErrBufferFull) {
				_, err = br.ReadSlice('\n')
			}
			if garbage.Len() < 4096 {
				fmt.Fprintf(garbage, "(a message longer than %d MiB was skipped)\n", maxMessage>>20)
			}
			if err == io.EOF {
				return nil, nil
			}
			if err != nil {
				return nil, err
			}
			continue
		}
		if errors.Is(err, bufio.ErrBufferFull) {
			continue
		}
		if len(bytes.TrimSpace(line)) > 0 {
			if resp := handleMessage(line, onEvent, onLocked, ready, garbage); resp != nil {
				return resp, nil
			}
		}
		line = line[:0]
		if err == io.EOF {
			return nil, nil
		}
		if err != nil {
			return nil, err
		}
	}
}

// handleMessage decodes one protocol line, passing events and lock notices
// on, and returns the result when it is one.
func handleMessage(b []byte, onEvent func(release.Event), onLocked func(lock.Holder), onReady func(), garbage *bytes.Buffer) *Response {
	var m message
	if err := json.Unmarshal(b, &m); err != nil {
		if garbage.Len() < 4096 {
			garbage.Write(bytes.TrimRight(b, "\r\n"))
			garbage.WriteByte('\n')
		}
		return nil
	}
	switch {
	case m.Result != nil:
		return m.Result
	case m.Event != nil && onEvent != nil:
		onEvent(*m.Event)
	case m.Locked != nil && onLocked != nil:
		onLocked(*m.Locked)
	case m.Ready:
		onReady()
	}
	return nil
}

// Held is a deploy lock held on one host for as long as its session lives.
type Held struct {
	Holder lock.Holder
	stdin  *io.PipeWriter
	done   chan struct{}
	err    error
}

// Release frees the lock and waits for the host to confirm.
func (h *Held) Release() error {
	h.stdin.Close()
	<-h.done
	return h.err
}

// Lost is closed when the session holding the lock ends early (the
// connection dropped or the lock was taken over).
func (h *Held) Lost() <-chan struct{} { return h.done }

// Hold takes the deploy lock on the host behind conn and keeps it until
// Release or until ctx ends, sending a heartbeat line on the session every
// third of the lease: a host that hears none for a whole lease frees the
// lock, whatever the connection says. When someone else holds it the error
// is a *lock.HeldError.
func Hold(ctx context.Context, conn Conn, req *Request) (*Held, error) {
	req.Protocol = ProtocolVersion
	req.Op = OpLock
	body, err := json.Marshal(req)
	if err != nil {
		return nil, err
	}
	inR, inW := io.Pipe()
	outR, outW := io.Pipe()
	h := &Held{stdin: inW, done: make(chan struct{})}
	locked := make(chan lock.Holder, 1)
	result := make(chan *Response, 1)
	var garbage bytes.Buffer
	go func() {
		resp, _ := readMessages(outR, nil, func(l lock.Holder) { locked <- l }, nil, &garbage)
		result <- resp
		_, _ = io.Copy(io.Discard, outR)
	}()
	runDone := make(chan error, 1)
	served := make(chan struct{})
	go func() {
		err := conn.Serve(ctx, inR, outW)
		outW.Close()
		inR.Close() // a heartbeat in flight fails instead of blocking
		close(served)
		runDone <- err
	}()
	go func() {
		_, _ = inW.Write(append(body, '\n'))
	}()
	select {
	case l := <-locked:
		h.Holder = l
		go heartbeat(inW, l.Lease, served)
		go func() {
			runErr := <-runDone
			resp := <-result
			switch {
			case resp != nil && !resp.OK:
				h.err = errors.New(resp.Error)
			case resp == nil && runErr != nil:
				h.err = runErr
			}
			close(h.done)
		}()
		return h, nil
	case resp := <-result:
		inW.Close()
		runErr := <-runDone
		if resp == nil {
			return nil, transportError(runErr, nil, garbage.String())
		}
		if resp.Held && resp.Holder != nil {
			return nil, &lock.HeldError{Holder: *resp.Holder, Now: time.Now()}
		}
		return nil, errors.New(resp.Error)
	}
}

// heartbeat writes a line on the lock session every third of lease until
// the session ends or the writer is closed (Release).
func heartbeat(w *io.PipeWriter, lease time.Duration, served <-chan struct{}) {
	every(served, heartbeatEvery(lease), func() bool {
		_, err := w.Write([]byte(heartbeatLine))
		return err == nil
	})
}

// heartbeatEvery is how often a holder of lease proves it is alive: three
// times a lease, so one late heartbeat does not lose the lock.
func heartbeatEvery(lease time.Duration) time.Duration {
	if lease <= 0 {
		lease = lock.DefaultLease
	}
	return lease / 3
}

// every calls fn every d until stop is closed or fn returns false.
func every(stop <-chan struct{}, d time.Duration, fn func() bool) {
	t := time.NewTicker(d)
	defer t.Stop()
	for {
		select {
		case <-stop:
			return
		case <-t.C:
			if !fn() {
				return
			}
		}
	}
}
