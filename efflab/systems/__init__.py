"""Systems built around the model: serving, several processes, speculative decoding.

- :mod:`~efflab.systems.serving` — a small serving engine: request streams, KV pool, scheduler (lesson 11)
- :mod:`~efflab.systems.distributed` — torch.distributed: α–β, DDP, ZeRO/FSDP, the torchrun launcher (lesson 14)
- :mod:`~efflab.systems.parallel` — splitting the model: tensor (Megatron), pipeline (GPipe, 1F1B),
  ring attention, and a (dp, tp, pp) planner (lesson 15)
- :mod:`~efflab.systems.speculative` — speculative decoding with a draft model (lesson 10)

May import core, kernels, techniques and measurement; nothing here imports studies, ui, check or course.
"""
