// Package node is the protocol between a rollout and the release engine on
// a host: `drover node serve` reads one JSON request on stdin, runs it
// through internal/release, and writes JSON lines on stdout — events as the
// work goes, then one result. Push mode runs it over SSH, the local
// transport as a child process; both speak exactly this.
package node

import (
	"time"

	"github.com/drover/drover/internal/config"
	"github.com/drover/drover/internal/lock"
	"github.com/drover/drover/internal/release"
	"github.com/drover/drover/internal/service"
)

// ProtocolVersion changes when Request or Response change incompatibly.
// 2: an activate may carry Barrier (ready, then wait for go on stdin).
const ProtocolVersion = 2

// CancelWait is how long a transport gives `drover node serve` to end once
// its request is cancelled (SIGTERM) before anything gets SIGKILL. The
// engine bounds its own work after a cancel (an activation switches the
// host back and restarts the previous release, bounded by the services'
// stop grace and health timeouts), and the deployer waits for its answer,
// so the summary says what each host serves.
const CancelWait = 3 * time.Minute

// Operations a Request can ask for.
const (
	OpPrepare        = "prepare"
	OpHooks          = "hooks"
	OpActivate       = "activate"
	OpRollback       = "rollback"
	OpRollbackTarget = "rollback-target"
	OpReleases       = "releases"
	OpCleanup        = "cleanup"
	OpExec           = "exec"
	OpService        = "service"
	OpLock           = "lock" // hold the lock while heartbeat lines arrive on stdin, until it closes
	OpLockManual     = "lock-manual"
	OpUnlock         = "unlock"
	OpLockStatus     = "lock-status"
	OpPing           = "ping"
	// OpCanary reads or changes the paused-canary record (Action: pause,
	// status, promote, abort, clear); it needs no lock, it changes no
	// release.
	OpCanary = "canary"
)

// Request is one thing a rollout asks of a host.
type Request struct {
	Protocol int          `json:"protocol"`
	Op       string       `json:"op"`
	App      *config.File `json:"app"`
	Env      string       `json:"env"`
	Host     string       `json:"host"`
	Roles    []string     `json:"roles,omitempty"`

	// Token is the fencing token of the deploy lock the caller holds. A
	// request that changes the host and carries none takes the lock itself
	// for its own length (as Holder), and is refused when someone holds it.
	Token int64 `json:"token,omitempty"`

	ID      string        `json:"id,omitempty"`
	Commit  string        `json:"commit,omitempty"`
	Spec    string        `json:"spec,omitempty"`
	By      string        `json:"by,omitempty"`
	RunOnce []string      `json:"run_once,omitempty"`
	Stage   string        `json:"stage,omitempty"`
	KeepFor time.Duration `json:"keep_for,omitempty"`
	Keep    int           `json:"keep,omitempty"`
	To      string        `json:"to,omitempty"`
	Command string        `json:"command,omitempty"`
	Service string        `json:"service,omitempty"`
	Action  string        `json:"action,omitempty"`
	Port    int           `json:"port,omitempty"`
	Holder  *lock.Holder  `json:"holder,omitempty"`
	Export  string        `json:"export,omitempty"`
	// Hotfix asks for a code-only release (deploy --hotfix): a prepare that
	// records a new release records it a hotfix, and the host's engine then
	// runs none of its hooks marked hotfix: skip. A release already
	// recorded keeps what its record says.
	Hotfix bool `json:"hotfix,omitempty"`
	// Canary is the record an OpCanary pause writes.
	Canary *release.Canary `json:"canary,omitempty"`
	// Barrier makes an activate two-step, so that every host of a rollout
	// switches at once: the host does everything that comes before the
	// switch of `current` (fencing check, engine lock, before_activate
	// hooks), sends a ready line, and waits for a go line on stdin
	// ({"go":true}). Anything else — {"go":false}, stdin closed, the
	// request cancelled — fails the activation before the switch: nothing
	// changed on the host.
	Barrier bool `json:"barrier,omitempty"`
	// CrashAt is a test hook: only a -tags droverdebug build accepts it.
	CrashAt string `json:"crash_at,omitempty"`
}

// Response is the result of a Request.
type Response struct {
	OK        bool              `json:"ok"`
	Error     string            `json:"error,omitempty"`
	Step      string            `json:"step,omitempty"` // the step that failed
	Tail      []string          `json:"tail,omitempty"` // its last lines of output
	ExitCode  int               `json:"exit_code,omitempty"`
	Release   *release.Record   `json:"release,omitempty"`
	Releases  []*release.Record `json:"releases,omitempty"`
	Active    string            `json:"active,omitempty"`
	Serving   *release.Serving  `json:"serving,omitempty"` // after a failed activation or rollback: what the host runs now
	Target    string            `json:"target,omitempty"`
	Removed   []string          `json:"removed,omitempty"`
	Processes []service.Process `json:"processes,omitempty"`
	Holder    *lock.Holder      `json:"holder,omitempty"`
	Held      bool              `json:"held,omitempty"` // the lock was held by someone else
	Version   string            `json:"version,omitempty"`
	Canary    *release.Canary   `json:"canary,omitempty"` // OpCanary, OpReleases: the paused canary, if any
}

// heartbeatLine is what a deployer holding an OpLock session sends on its
// stdin every third of the lease; any line counts.
const heartbeatLine = "{\"heartbeat\":true}\n"

// message is one line on the wire: an event or the result.
type message struct {
	Event  *release.Event `json:"event,omitempty"`
	Result *Response      `json:"result,omitempty"`
	Locked *lock.Holder   `json:"locked,omitempty"`
	// Ready says a Barrier activate is ready to switch and waits for go.
	Ready bool `json:"ready,omitempty"`
}

// goLine is what the deployer sends a Barrier activate once it has
// decided: Go true switches, false calls the switch off.
type goLine struct {
	Go bool `json:"go"`
}
