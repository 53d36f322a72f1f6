"""The recipes (`*.yaml`, `layouts/`) and their schemas: structured configs every layer above imports, importing
only `rewards` and `data_gen` below them. One job per module, in import order:

- `base`: `ConfigError`, the `Choice` enum (`choice`), `did_you_mean`;
- `schema`: the training process's dataclasses (`TrainConfig` and the shared pieces: model, sampling, zoom, data,
  rollout, learner, cluster, loop, tracking), every field documented where it is defined;
- `jobs`: the other commands' dataclasses (`MCTSJobConfig`, `TeacherConfig`, `SFTConfig`, `DemoConfig`,
  `EvalConfig`) and their own defaults;
- `placement`: GPU placement rules (`nccl_sync`, `shm_sync`, `shares_gpu`, `torch_threads`);
- `released`: the released recipes' values for fields left null (`official_defaults`, docs/algorithm.md §5, §8);
- `fields`: each field's documentation (`field_docs`, `describe`: `vigorl <cmd> --help`);
- `rules`: value checks (`RULES` ranges, registry names, cross-field rules; `validate`);
- `load`: `load` (defaults <- YAML <- key=value, then `validate`) and `to_flat_dict`.
"""
