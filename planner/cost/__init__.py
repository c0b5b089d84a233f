"""Pure cost functions over PlanArrays: FLOPs, memory, communication, step time."""
