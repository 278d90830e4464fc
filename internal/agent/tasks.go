package agent

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/drover/drover/internal/api"
)

// tasksSchema is the version of the rollouts.json format.
const tasksSchema = 1

// maxTasks bounds the finished tasks kept per app/env: a rollout asks a
// node a handful of tasks, and only the latest ones can be asked again.
const maxTasks = 32

// tasksFile is what the agent keeps in state_dir/rollouts.json, per
// app/env ("app/env"): the highest fencing token it acted on and the
// rollout tasks it finished. It survives restarts, so a lower token is
// refused and a finished task is never done twice.
type tasksFile struct {
	Schema int                  `json:"schema"`
	Apps   map[string]*appTasks `json:"apps"`
}

// appTasks is the record of one app/env.
type appTasks struct {
	// Token is the highest fencing token of the environment's deploy
	// lease this node acted on; Rollout the rollout it came with.
	Token   int64 `json:"token"`
	Rollout int64 `json:"rollout,omitempty"`
	// Seen says a token was ever seen: from then on a state without one
	// (an old server) is refused too.
	Seen  bool          `json:"seen,omitempty"`
	Tasks []taskOutcome `json:"tasks,omitempty"` // oldest first, at most maxTasks
}

// taskOutcome is how a finished rollout task ended on this node.
type taskOutcome struct {
	Rollout   int64     `json:"rollout"`
	Task      int64     `json:"task"`
	ReleaseID int64     `json:"release_id"`
	Action    string    `json:"action"`
	OK        bool      `json:"ok"`
	Error     string    `json:"error,omitempty"`
	Serving   string    `json:"serving,omitempty"`
	Ended     time.Time `json:"ended"`
}

func (a *Agent) tasksPath() string { return filepath.Join(a.Config.StateDir, "rollouts.json") }

// loadTasks reads rollouts.json once; callers hold a.mu.
func (a *Agent) loadTasks() (*tasksFile, error) {
	if a.tasks != nil {
		return a.tasks, nil
	}
	path := a.tasksPath()
	f := &tasksFile{Schema: tasksSchema, Apps: map[string]*appTasks{}}
	b, err := os.ReadFile(path)
	switch {
	case errors.Is(err, os.ErrNotExist):
	case err != nil:
		return nil, fmt.Errorf("read %s: %w", path, err)
	default:
		if err := json.Unmarshal(b, f); err != nil {
			return nil, fmt.Errorf("read %s: %w; it holds the fencing tokens and finished rollout tasks of this node: repair it, or remove it to accept the server's next state whatever its token", path, err)
		}
		if f.Schema != tasksSchema {
			return nil, fmt.Errorf("read %s: schema %d, this agent knows %d; run the agent version that wrote it, or remove the file", path, f.Schema, tasksSchema)
		}
		if f.Apps == nil {
			f.Apps = map[string]*appTasks{}
		}
	}
	a.tasks = f
	return f, nil
}

// appTasks returns the record of app/env key, made empty when missing;
// callers hold a.mu.
func (a *Agent) appTasks(key string) (*appTasks, error) {
	f, err := a.loadTasks()
	if err != nil {
		return nil, err
	}
	at := f.Apps[key]
	if at == nil {
		at = &appTasks{}
		f.Apps[key] = at
	}
	return at, nil
}

// saveTasks writes rollouts.json atomically, readable by root only;
// callers hold a.mu.
func (a *Agent) saveTasks() error {
	b, err := json.MarshalIndent(a.tasks, "", "  ")
	if err != nil {
		return err
	}
	if err := os.MkdirAll(a.Config.StateDir, 0o700); err != nil {
		return err
	}
	if err := writeAtomic(a.tasksPath(), append(b, '\n')); err != nil {
		return fmt.Errorf("keep the fencing token and finished tasks in %s: %w", a.tasksPath(), err)
	}
	return nil
}

// writeAtomic replaces path with data (mode 0600) so that a crash leaves
// the old or the new content, never a mix: a temporary file, synced,
// renamed into place, and the directory synced.
func writeAtomic(path string, data []byte) error {
	dir := filepath.Dir(path)
	tmp, err := os.CreateTemp(dir, filepath.Base(path)+".*.tmp")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name()) // fails harmlessly after the rename
	_, err = tmp.Write(data)
	if err == nil {
		err = tmp.Chmod(0o600)
	}
	if err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp.Name(), path)
	}
	if err != nil {
		return err
	}
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// fence checks want's fencing token against the highest this node acted on
// for its app/env and, when it is accepted, keeps it as the highest. It
// returns false, having said why in the log, for a state the agent must
// not act on: a lower token (a runner that lost the environment's lease),
// or none once a token was seen.
func (a *Agent) fence(want api.DesiredApp) (bool, error) {
	key := want.App + "/" + want.Env
	a.mu.Lock()
	defer a.mu.Unlock()
	at, err := a.appTasks(key)
	if err != nil {
		return false, err
	}
	if want.Token < at.Token || want.Token == 0 && at.Seen {
		a.log().Warn("refused a desired state with a lower fencing token than one this node acted on (it comes from a runner that lost the environment's deploy lease); nothing done",
			"app", want.App, "env", want.Env, "token", want.Token, "highest", at.Token, "rollout", want.Rollout, "highest_rollout", at.Rollout, "state", a.tasksPath())
		return false, nil
	}
	if want.Token == 0 || want.Token == at.Token && at.Seen {
		return true, nil
	}
	at.Token, at.Rollout, at.Seen = want.Token, want.Rollout, true
	return true, a.saveTasks()
}

// finished returns the recorded outcome of the rollout task want asks,
// when this node finished it.
func (a *Agent) finished(want api.DesiredApp) (*taskOutcome, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	at, err := a.appTasks(want.App + "/" + want.Env)
	if err != nil {
		return nil, err
	}
	for i := range at.Tasks {
		if t := at.Tasks[i]; t.Rollout == want.Rollout && t.Task == want.Task {
			return &t, nil
		}
	}
	return nil, nil
}

// recordFinished keeps the outcome of a finished rollout task, before it
// is reported: a restart after this point reports it again, and never
// does it again.
func (a *Agent) recordFinished(app, env string, o taskOutcome) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	at, err := a.appTasks(app + "/" + env)
	if err != nil {
		return err
	}
	at.Tasks = append(at.Tasks, o)
	if n := len(at.Tasks); n > maxTasks {
		at.Tasks = append([]taskOutcome(nil), at.Tasks[n-maxTasks:]...)
	}
	return a.saveTasks()
}
