package main

import "errors"

var (
	errExecArgs    = errors.New("exec needs an environment and a command: drover exec ENV -- COMMAND")
	errServiceArgs = errors.New("service needs an action and an environment: drover service start|stop|restart|status ENV [NAME]")
)

var errRolloutID = errors.New("a rollout ID is a positive number (drover rollouts APP lists them)")
