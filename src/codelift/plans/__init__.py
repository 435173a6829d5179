"""Plan distillation (CodePLAN): teacher plans by backward reasoning, checked in the sandbox
(`codelift.plans.teacher`), and plan sampling with selection on visible tests at inference
(`codelift.plans.sampling`). The multi-task training stage is `codelift.train.plan_train`."""
