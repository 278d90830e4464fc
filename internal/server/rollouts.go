package server

import (
	"errors"
	"fmt"
	"net/http"
	"strconv"

	"github.com/drover/drover/internal/api"
)

// maxRolloutList is the most rollouts one list answers.
const maxRolloutList = 200

// listRollouts answers GET /api/v1/rollouts?app=&env=&limit=: running,
// queued (with their position) and finished rollouts, newest first, with
// their nodes' progress.
func (s *Server) listRollouts(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	app, env := q.Get("app"), q.Get("env")
	err := validName("app", app)
	if env != "" {
		err = errors.Join(err, validName("env", env))
	}
	limit := 20
	if l := q.Get("limit"); l != "" {
		n, perr := strconv.Atoi(l)
		if perr != nil || n <= 0 || n > maxRolloutList {
			err = errors.Join(err, fmt.Errorf("limit must be a number from 1 to %d", maxRolloutList))
		}
		limit = n
	}
	if err != nil {
		writeError(w, http.StatusBadRequest, "bad request", "GET /api/v1/rollouts?app=APP[&env=ENV][&limit=N]: "+err.Error())
		return
	}
	ros, err := s.control.Rollouts(r.Context(), app, env, limit)
	if err != nil {
		s.storeError(w, err)
		return
	}
	if ros == nil {
		ros = []api.Rollout{}
	}
	writeJSON(w, http.StatusOK, ros)
}

// getRollout answers GET /api/v1/rollouts/{id}.
func (s *Server) getRollout(w http.ResponseWriter, r *http.Request) {
	id, ok := pathID(w, r)
	if !ok {
		return
	}
	ro, err := s.control.Rollout(r.Context(), id)
	if err != nil {
		s.storeError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, ro)
}

// cancelRollout answers POST /api/v1/rollouts/{id}/cancel: a queued
// rollout leaves the queue; 409 when it runs or ended.
func (s *Server) cancelRollout(w http.ResponseWriter, r *http.Request) {
	id, ok := pathID(w, r)
	if !ok {
		return
	}
	p := from(r)
	ro, err := s.control.CancelRollout(r.Context(), id, p.String())
	if err != nil {
		s.storeError(w, err)
		return
	}
	s.audit(r.Context(), p, "rollout.cancel", map[string]any{"id": id})
	writeJSON(w, http.StatusOK, ro)
}

// decision reads an api.Decision body: promote or abort.
func decision(w http.ResponseWriter, r *http.Request) (string, bool) {
	var d api.Decision
	if !decode(w, r, &d) {
		return "", false
	}
	if d.Decision != "promote" && d.Decision != "abort" {
		writeError(w, http.StatusBadRequest, "bad request", fmt.Sprintf("decision %q: give promote or abort", d.Decision))
		return "", false
	}
	return d.Decision, true
}

// decideRollout answers POST /api/v1/rollouts/{id}/decide: promote or
// abort a canary rollout.
func (s *Server) decideRollout(w http.ResponseWriter, r *http.Request) {
	id, ok := pathID(w, r)
	if !ok {
		return
	}
	d, ok := decision(w, r)
	if !ok {
		return
	}
	p := from(r)
	ro, err := s.control.Decide(r.Context(), id, d, p.String())
	if err != nil {
		s.storeError(w, err)
		return
	}
	s.audit(r.Context(), p, "rollout."+d, map[string]any{"id": id})
	writeJSON(w, http.StatusOK, ro)
}

// decideEnv answers POST /api/v1/rollouts/decide?app=&env=: promote or
// abort the environment's running canary rollout.
func (s *Server) decideEnv(w http.ResponseWriter, r *http.Request) {
	app, env := r.URL.Query().Get("app"), r.URL.Query().Get("env")
	if err := errors.Join(validName("app", app), validName("env", env)); err != nil {
		writeError(w, http.StatusBadRequest, "bad request", "POST /api/v1/rollouts/decide?app=APP&env=ENV: "+err.Error())
		return
	}
	d, ok := decision(w, r)
	if !ok {
		return
	}
	p := from(r)
	ro, err := s.control.DecideEnv(r.Context(), app, env, d, p.String())
	if err != nil {
		s.storeError(w, err)
		return
	}
	s.audit(r.Context(), p, "rollout."+d, map[string]any{"id": ro.ID, "app": app, "env": env})
	writeJSON(w, http.StatusOK, ro)
}
