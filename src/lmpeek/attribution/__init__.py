"""Why the model said what it said: attributions of a prediction to its input (through Captum) with
their faithfulness, prompt-ablation studies, the information-flow graph, and interventions (ablate,
patch, steer). Torch lives here; nothing torch-free imports this package."""
