package release

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// exclusive runs fn while this process holds the engine lock of deploy_to:
// an flock on .drover/engine.lock that serialises every engine that
// changes this deploy_to — a push deploy, the agent, or a deployer's
// process still finishing a hook after its deployer was killed (the deploy
// lock was freed at once; the work on the host was not). A waiting engine
// says whom it waits for. The kernel drops the lock when its holder dies.
func (e *Engine) exclusive(ctx context.Context, fn func() error) error {
	if err := os.MkdirAll(e.Layout.State(), 0o755); err != nil {
		return fmt.Errorf("engine lock: %w", err)
	}
	path := filepath.Join(e.Layout.State(), "engine.lock")
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return fmt.Errorf("engine lock: %w", err)
	}
	defer f.Close()
	told := false
	for {
		err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
		if err == nil {
			break
		}
		if err != syscall.EWOULDBLOCK {
			return fmt.Errorf("engine lock: %w", err)
		}
		if !told {
			holder, _ := os.ReadFile(path)
			e.emit(Event{Kind: EventInfo, Step: "wait", Line: "waiting for another drover process working in " + e.Layout.Root + " to finish (" + strings.TrimSpace(string(holder)) + ")"})
			told = true
		}
		t := time.NewTimer(100 * time.Millisecond)
		select {
		case <-ctx.Done():
			t.Stop()
			return fmt.Errorf("waiting for another drover process in %s: %w", e.Layout.Root, ctx.Err())
		case <-t.C:
		}
	}
	defer syscall.Flock(int(f.Fd()), syscall.LOCK_UN)
	_ = f.Truncate(0)
	_, _ = f.WriteAt([]byte("pid "+strconv.Itoa(os.Getpid())+" since "+time.Now().UTC().Format(time.RFC3339)+"\n"), 0)
	return fn()
}

// Exclusive runs fn while this process holds the engine lock of deploy_to,
// as the engine's own verbs do: callers outside the engine (a command run
// in the current release, a service action, a deploy lock that must not be
// freed while a step is still running) wait for whatever engine works here.
func (e *Engine) Exclusive(ctx context.Context, fn func() error) error {
	return e.exclusive(ctx, fn)
}
