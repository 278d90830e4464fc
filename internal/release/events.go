package release

import "time"

// Event kinds the engine emits while it works.
const (
	EventStepStart = "step_start"
	EventStepEnd   = "step_end"
	EventOutput    = "output"
	EventInfo      = "info"
)

// Event is one thing the engine reports as it works: a step beginning or
// ending, or a line of a command's output. Push mode streams events back
// to the deployer; the agent reports them to the server.
type Event struct {
	Kind    string        `json:"kind"`
	Step    string        `json:"step,omitempty"`
	Line    string        `json:"line,omitempty"`
	Error   string        `json:"error,omitempty"`
	Elapsed time.Duration `json:"elapsed,omitempty"`
	Time    time.Time     `json:"time"`
}
